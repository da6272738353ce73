"""The building blocks of AVT-CA, each a small module named for the paper's part it implements."""

from __future__ import annotations

import torch
from torch import nn


class AudioConvBlock(nn.Sequential):
    """Conv1d(k=3, valid) -> BatchNorm -> ReLU -> MaxPool1d(2) (paper III-A1, Eq. 1a-1d)."""

    def __init__(self, c_in: int, c_out: int, pool_stride: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size=3),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(kernel_size=2, stride=pool_stride),
        )


class TemporalConvBlock(nn.Sequential):
    """Conv1d(k=3, same padding) -> BatchNorm -> ReLU over the frames of one clip."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True))


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1,
            relu: bool = True) -> nn.Sequential:
    """Conv2d -> BatchNorm -> optional ReLU, with 'same' padding for odd kernels."""
    padding = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit with depthwise separable convolutions (paper III-A2, 'inverted residual block').

    fused=True replaces each depthwise 3x3 and the 1x1 before it by one dense 3x3 convolution (the
    Fused-MBConv idea of EfficientNetV2): more arithmetic, far fewer memory-bound steps, so cheaper to train
    on a CPU with matrix units at the small resolutions of a 48-pixel face.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, fused: bool = False):
        super().__init__()
        # A unit that keeps size and width splits its input and works on one half; any other works on all of it
        # in two branches.
        self.split = stride == 1 and c_in == c_out
        half = c_out // 2
        if not self.split:
            self.branch1 = (conv_bn(c_in, half, 3, stride) if fused else
                            nn.Sequential(conv_bn(c_in, c_in, 3, stride, groups=c_in, relu=False),
                                          conv_bn(c_in, half, 1)))
            branch2_in = c_in
        else:
            self.branch1 = nn.Identity()
            branch2_in = half
        if fused:
            self.branch2 = nn.Sequential(conv_bn(branch2_in, half, 3, stride), conv_bn(half, half, 1))
        else:
            self.branch2 = nn.Sequential(
                conv_bn(branch2_in, half, 1),
                conv_bn(half, half, 3, stride, groups=half, relu=False),
                conv_bn(half, half, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            keep, x2 = x.chunk(2, dim=1)
            out = torch.cat((keep, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def inverted_residual_stage(c_in: int, c_out: int, repeats: int, fused: bool = False,
                            stride: int = 2) -> nn.Sequential:
    """One unit of `stride` that widens c_in to c_out, then repeats - 1 stride-1 units."""
    return nn.Sequential(InvertedResidual(c_in, c_out, stride, fused),
                         *(InvertedResidual(c_out, c_out, 1, fused) for _ in range(repeats - 1)))


class ChannelAttention(nn.Module):
    """Global average pool -> FC -> BN -> ReLU -> FC: one weight per channel, (N, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class SpatialAttention(nn.Module):
    """1x1 conv -> two dilated 3x3 convs -> 1x1 conv to one map: one weight per position, (N, 1, H, W)."""

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.body = nn.Sequential(
            conv_bn(channels, hidden, 1),
            conv_bn(hidden, hidden, 3, dilation=dilation),
            conv_bn(hidden, hidden, 3, dilation=dilation),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Modulator(nn.Module):
    """Channel attention times spatial attention, squashed, multiplied onto the features (paper III-A2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.channel(x) * self.spatial(x))


class LocalFeatureExtractor(nn.Module):
    """Four spatial patches, each through stride-2 depthwise 3x3 convs, tiled back (paper III-A2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        if c_out % c_in:
            raise ValueError(f"local feature extractor: {c_out} output channels must be a multiple of {c_in}")
        self.patches = nn.ModuleList(
            nn.Sequential(conv_bn(c_in, c_out, 3, 2, groups=c_in), conv_bn(c_out, c_out, 3, 1, groups=c_out))
            for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Its depthwise convolutions train faster in fp32 than in bf16 on a CPU.
            with torch.autocast("cpu", enabled=False):
                return self.forward(x.float())
        h, w = x.shape[2] // 2, x.shape[3] // 2
        top = torch.cat((self.patches[0](x[:, :, :h, :w]), self.patches[1](x[:, :, :h, w:])), dim=3)
        bottom = torch.cat((self.patches[2](x[:, :, h:, :w]), self.patches[3](x[:, :, h:, w:])), dim=3)
        return torch.cat((top, bottom), dim=2)


class CrossModalBlock(nn.Module):
    """Pre-LN cross-attention, queries from x and keys/values from y, then x + MLP(LN(x)) (paper III-B)."""

    def __init__(self, dim: int, other_dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(other_dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, kdim=other_dim, vdim=other_dim, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(y)
        out, _ = self.attn(self.norm_q(x), kv, kv, need_weights=False)  # (B, Lx, dim)
        return out + self.mlp(self.norm_mlp(out))


class CrossAttention(nn.Module):
    """Multi-head attention with queries from x and keys/values from y, plus the residual (paper III-C, Alg. 1)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(y)
        out, _ = self.attn(self.norm_q(x), kv, kv, need_weights=False)
        return out + x
