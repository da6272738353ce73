"""The face CNN rewritten for inference: the same function, laid out for ONNX Runtime's blocked convolutions.

ONNX Runtime runs convolutions fastest in its blocked channel layout (NCHWc, 16 channels per block on AVX-512),
and only where channel counts fit that layout; every Split, Concat and Transpose in between forces a conversion
back to plain NCHW and another copy. The ShuffleNetV2 units of the face CNN have both problems: widths such as
29, 58 and 116, and per unit a Split, a Concat and a channel shuffle (Reshape-Transpose-Reshape).

`PackedFaceEncoder` computes exactly what `FaceEncoder` computes (to float rounding), with:
- BatchNorm folded into each convolution's weights and bias;
- every width zero-padded to a multiple of 16 (padded channels hold exact zeros throughout);
- no Split and no shuffle. The shuffles decide, for every channel a unit writes, which later unit reads it, so
  each unit writes its channels straight into tensors for their readers (`PiecedStage`) and every convolution
  reads only the channels it uses; the shuffles become bookkeeping (`pos`: logical channel -> physical position)
  absorbed into the weights;
- the stem reading the crops' channel-last pixels as they are stored (`InterleavedStem`), without a transpose,
  and the pixel scaling x * 2/255 - 1 folded into it: (x - 127.5) times scaled weights, which keeps the zero
  padding exact;
- the local feature extractor's four patches run at once, their quarters moved into channels (`PackedLocal`),
  with stage 2 ending in the order that leaves its channels in, so the two add as they are.

Paper preset, ONNX Runtime, one thread, measured side by side in one process: 94.9 ms with one tensor per stage
and 0/1 masks carrying the kept halves, 81.9 ms with stages 3 and 4 pieced, 79.2 ms with the local feature
extractor's grouped convolution as depthwise ones (PyTorch eager 156 ms in that run); see docs/performance.md for what
followed.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .network import AVTCA, FaceEncoder

BLOCK = 16  # channels per block of ONNX Runtime's NCHWc layout on AVX-512


def padded(channels: int) -> int:
    return -(-channels // BLOCK) * BLOCK


def shuffle_source(channels: int) -> np.ndarray:
    """For channel_shuffle(x, 2): output channel k comes from input channel shuffle_source(c)[k]."""
    half = channels // 2
    k = np.arange(channels)
    return (k % 2) * half + k // 2


def _fold(seq: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor, nn.Conv2d, bool]:
    """conv_bn(...) -> (weight, bias) with the BatchNorm folded in, the conv (for its geometry), has ReLU."""
    conv, bn = seq[0], seq[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    return weight.detach(), bias.detach(), conv, len(seq) > 2


class PlacedConv(nn.Module):
    """A folded convolution with its rows and columns placed at physical channel positions of padded tensors."""

    def __init__(self, seq: nn.Sequential, rows: np.ndarray, out_width: int, cols: np.ndarray, in_width: int):
        super().__init__()
        weight, bias, conv, self.relu = _fold(seq)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if conv.groups != 1:
            raise ValueError(f"a placed convolution is dense (groups={conv.groups}); see PlacedDepthwise")
        self.groups = 1
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        w = weight.new_zeros(out_width, in_width, *weight.shape[2:])
        w[rows_t[:, None], torch.as_tensor(cols, dtype=torch.long)[None, :]] = weight
        b = bias.new_zeros(out_width)
        b[rows_t] = bias
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu(y) if self.relu else y


class PlacedDepthwise(PlacedConv):
    """A depthwise convolution on a padded tensor: channel c at physical position pos[c]."""

    def __init__(self, seq: nn.Sequential, pos: np.ndarray, width: int):
        nn.Module.__init__(self)
        weight, bias, conv, self.relu = _fold(seq)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, width
        idx = torch.as_tensor(pos, dtype=torch.long)
        w = weight.new_zeros(width, 1, *weight.shape[2:])
        w[idx] = weight
        b = bias.new_zeros(width)
        b[idx] = bias
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)


class InterleavedStem(PlacedConv):
    """The stem convolution read straight from pixels stored channel-last, without a transpose.

    With each image row's C channels interleaved (N, 1, H, W * C), a k x k convolution of stride s on C channels is
    a k x (k * C) convolution of stride (s, s * C) on one channel: kernel column kx * C + c holds weight (c, kx).
    Zero padding of p pixels is p rows and p * C columns. The pixel scaling x * 2/255 - 1 is folded in as
    (x - 127.5) times scaled weights, which keeps the zero padding exact.
    """

    def __init__(self, seq: nn.Sequential, out_width: int):
        nn.Module.__init__(self)
        weight, bias, conv, self.relu = _fold(seq)
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("the stem convolution is dense and undilated")
        out, c, kh, kw = weight.shape
        self.channels = c
        self.stride = (conv.stride[0], conv.stride[1] * c)
        self.padding = (conv.padding[0], conv.padding[1] * c)
        self.dilation, self.groups = (1, 1), 1
        w = weight.new_zeros(out_width, 1, kh, kw * c)
        w[:out, 0] = (weight * (2.0 / 255.0)).permute(0, 2, 3, 1).reshape(out, kh, kw * c)
        b = bias.new_zeros(out_width)
        b[:out] = bias
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)


class PieceConv(nn.Module):
    """A folded convolution with explicit weights (a piece of a `PiecedStage`, a part of `PackedLocal`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool, stride: int = 1,
                 padding: int = 0, groups: int = 1):
        super().__init__()
        self.relu, self.stride, self.padding, self.groups = relu, stride, padding, groups
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        if add is not None:
            y = y + add
        return F.relu(y) if self.relu else y


SMALL = 8  # pieces with fewer channels share one tensor per reading unit (see PiecedStage)


def channel_routes(c_out: int, units: int) -> tuple[dict, dict, list]:
    """Follow every channel through a stage's shuffles. A channel is (producer, index): producer -1 is the first
    unit's first branch, k >= 0 the second branch of unit k. Returns reader[channel] (the stride-1 unit whose
    branch reads it, or `units` where it leaves the stage), branch_input[k][channel] (its index in unit k's branch
    input) and the stage's output channels in logical order."""
    half = c_out // 2
    src = shuffle_source(c_out)
    cur = [(-1, i) for i in range(half)] + [(0, i) for i in range(half)]
    cur = [cur[j] for j in src]
    branch_input: dict[int, dict] = {}
    reader: dict[tuple[int, int], int] = {}
    for k in range(1, units):
        branch_input[k] = {ch: j for j, ch in enumerate(cur[half:])}
        reader.update((ch, k) for ch in cur[half:])
        pre = cur[:half] + [(k, i) for i in range(half)]
        cur = [pre[j] for j in src]
    reader.update((ch, units) for ch in cur)
    return reader, branch_input, cur


def end_tensors(out: list, pos_end: np.ndarray, width: int) -> list[list]:
    """The tensors that hold a stage's output when output channel c must land at pos_end[c] of a `width`-channel
    tensor: the width cut into blocks, consecutive blocks written by the same producers forming one tensor. Each
    tensor lists its channels by position, None for padding."""
    blocks = [[None] * BLOCK for _ in range(width // BLOCK)]
    for c, ch in enumerate(out):
        blocks[pos_end[c] // BLOCK][pos_end[c] % BLOCK] = ch
    producers = [{ch[0] for ch in block if ch is not None} for block in blocks]
    if not all(producers):
        raise ValueError("every block of the stage's output must hold at least one channel")
    tensors: list[list] = []
    for b, block in enumerate(blocks):
        if b and producers[b] == producers[b - 1]:
            tensors[-1] += block
        else:
            tensors.append(list(block))
    return tensors


def piece_tensors(reader: dict, units: int, end: list[list] | None = None) -> tuple[list[list], list[int]]:
    """The tensors a `PiecedStage` writes: for each reader, one per producer, except that the producers' pieces
    of fewer than SMALL channels share one; the stage's output as `end` lays it out, if given. Returns each
    tensor's channels by position (None for padding) and its reader."""
    groups: dict[tuple[int, int], list] = {}
    for ch, k in sorted(reader.items()):
        groups.setdefault((ch[0], k), []).append(ch)
    slots: list[list] = []
    readers: list[int] = []
    grouped = range(1, units + 1)  # every reader, the stage's output (reader `units`) included
    if end is not None:
        slots, readers = list(end), [units] * len(end)
        grouped = range(1, units)
    for k in grouped:
        small = []
        for (_, r), chans in sorted(groups.items()):
            if r != k:
                continue
            if len(chans) >= SMALL:
                slots.append(chans)
                readers.append(k)
            else:
                small += chans
        if small:
            slots.append(small)
            readers.append(k)
    return slots, readers


class PiecedStage(nn.Module):
    """A stage in which every channel goes from the unit that writes it straight to the unit that reads it.

    Inside a stage, the channel shuffles decide, for every channel a unit writes, which later unit's branch reads
    it (or that it leaves the stage). So each unit writes its output as separate tensors ("pieces"), one per
    reading unit, each padded to whole blocks, and a unit's first convolution is the sum of one convolution per
    piece it reads. Each channel is written once and read once: no Split, no shuffle, no copy, and every
    convolution reads only the channels it uses, up to block padding. The few channels that survive several
    units would make many small pieces; those meant for one reader (fewer than SMALL from each writer) share one
    tensor, which each writer adds its rows to (relu(conv + partial) is exact: the rows never overlap, and the
    partial is a ReLU output). The pieces that leave the stage are concatenated; `pos_out` gives each logical
    output channel's position there and `out_width` the width. With `pos_end`, the output is laid out as asked
    instead (channel c at pos_end[c] of `end_width`; see `end_tensors`), which works when each block there is
    written by few units.
    """

    def __init__(self, stage: nn.Sequential, c_out: int, pos_in: np.ndarray, in_width: int,
                 pos_end: np.ndarray | None = None, end_width: int = 0):
        super().__init__()
        units = list(stage)
        n, half = len(units), c_out // 2
        half_w = padded(half)
        if units[0].split or not all(u.split for u in units[1:]):
            raise ValueError("a stage is one widening or stride-2 unit followed by units that split their input")
        if any(len(u.branch2) != 3 for u in units):
            raise ValueError("only depthwise units are pieced (see packs())")
        reader, branch_input, cur = channel_routes(c_out, n)
        end = None if pos_end is None else end_tensors(cur, pos_end, end_width)
        slots, readers = piece_tensors(reader, n, end)
        where = {ch: (t, i) for t, chans in enumerate(slots) for i, ch in enumerate(chans) if ch is not None}

        def writes(seq: nn.Sequential, producer: int, cols: np.ndarray, width: int) -> tuple[list, nn.ModuleList]:
            """The producer's output convolution, one per tensor it writes to; `cols`: physical input positions."""
            weight, bias, _, relu = _fold(seq)
            tensors, convs = sorted({where[(producer, i)][0] for i in range(weight.shape[0])}), []
            for t in tensors:
                rows = [(i, ch[1]) for i, ch in enumerate(slots[t]) if ch is not None and ch[0] == producer]
                at = torch.as_tensor([r for r, _ in rows], dtype=torch.long)
                idx = torch.as_tensor([i for _, i in rows], dtype=torch.long)
                w = weight.new_zeros(padded(len(slots[t])), width, 1, 1)
                w[at[:, None], torch.as_tensor(cols, dtype=torch.long)[None, :]] = weight[idx]
                b = bias.new_zeros(padded(len(slots[t])))
                b[at] = bias[idx]
                convs.append(PieceConv(w, b, relu))
            return tensors, nn.ModuleList(convs)

        ident = np.arange(half)
        first = units[0]
        dw, pw = first.branch1
        self.b1_dw = PlacedDepthwise(dw, pos_in, in_width)
        self.b1_out, self.b1_pw = writes(pw, -1, pos_in, in_width)
        f, d, last = first.branch2
        self.b2 = nn.ModuleList([PlacedConv(f, ident, half_w, pos_in, in_width), PlacedDepthwise(d, ident, half_w)])
        self.b2_out, self.b2_last = writes(last, 0, ident, half_w)
        self.reads_in, self.writes_out = [], []
        self.reads, self.dws, self.writes = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for k in range(1, n):
            f, d, last = units[k].branch2
            weight, bias, _, _ = _fold(f)
            tensors = [t for t, r in enumerate(readers) if r == k]
            convs = []
            for m, t in enumerate(tensors):
                cols = torch.as_tensor([branch_input[k][ch] for ch in slots[t]], dtype=torch.long)
                w = weight.new_zeros(half_w, padded(len(cols)), 1, 1)
                w[:half, :len(cols)] = weight[:, cols]
                b = None
                if m == 0:
                    b = bias.new_zeros(half_w)
                    b[:half] = bias
                convs.append(PieceConv(w, b, relu=False))
            self.reads_in.append(tensors)
            self.reads.append(nn.ModuleList(convs))
            self.dws.append(PlacedDepthwise(d, ident, half_w))
            out, wconvs = writes(last, k, ident, half_w)
            self.writes_out.append(out)
            self.writes.append(wconvs)
        self.end = [t for t, r in enumerate(readers) if r == n]
        offsets, at = {}, 0
        for t in self.end:
            offsets[t] = at
            at += padded(len(slots[t]))
        self.out_width = at
        self.pos_out = np.array([offsets[where[ch][0]] + where[ch][1] for ch in cur])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces: dict[int, torch.Tensor] = {}

        def write(y, tensors, convs):
            for t, conv in zip(tensors, convs):
                pieces[t] = conv(y, add=pieces.get(t))

        write(self.b1_dw(x), self.b1_out, self.b1_pw)
        write(self.b2[1](self.b2[0](x)), self.b2_out, self.b2_last)
        for tensors, reads, dw, out, writes in zip(self.reads_in, self.reads, self.dws, self.writes_out, self.writes):
            total = None
            for t, conv in zip(tensors, reads):
                part = conv(pieces.pop(t))
                total = part if total is None else total + part
            write(dw(F.relu(total)), out, writes)
        return torch.cat([pieces[t] for t in self.end], dim=1)


def local_positions(c_in: int, multiplier: int) -> np.ndarray:
    """Where `PackedLocal` puts logical channel m * g + j (j-th output of input channel g): block j, index g."""
    g, j = np.divmod(np.arange(c_in * multiplier), multiplier)
    return j * padded(c_in) + g


class PackedLocal(nn.Module):
    """The local feature extractor on padded tensors: four patches, each a grouped 3x3 (stride 2, `multiplier`
    outputs per input channel) then a depthwise 3x3.

    Cut into quarters and tiled back, the four patches cost ONNX Runtime more in slices, layout conversions and
    concatenations than in convolutions. So one transpose moves the quarters into channels (channel q * w + g:
    quarter q, input channel g at its padded position) and every patch runs at once. A grouped convolution with a
    channel multiplier runs outside ONNX Runtime's blocked kernels (one tiny matrix product per group), so it is
    written as `multiplier` depthwise convolutions, the j-th computing each input channel's j-th output; their
    outputs are concatenated (channel j * 4w + q * w + g), the depthwise 3x3 runs on all of them, and one transpose
    tiles the quarters back. The result holds logical channel m * g + j at `local_positions` (block j, index g);
    stage 2 is pieced to end in that order.
    """

    def __init__(self, local: nn.Module, c_in: int, multiplier: int):
        super().__init__()
        in_w = padded(c_in)
        self.multiplier = multiplier
        self.pos = local_positions(c_in, multiplier)
        quarters = len(local.patches)
        folded = [(_fold(patch[0]), _fold(patch[1])) for patch in local.patches]
        (_, _, conv, relu), (_, _, conv2, relu2) = folded[0]
        first = []
        for j in range(multiplier):
            w = conv.weight.new_zeros(quarters * in_w, 1, *conv.weight.shape[2:])
            b = conv.weight.new_zeros(quarters * in_w)
            for q, ((weight, bias, _, _), _) in enumerate(folded):
                w[q * in_w:q * in_w + c_in] = weight[j::multiplier]
                b[q * in_w:q * in_w + c_in] = bias[j::multiplier]
            first.append(PieceConv(w, b, relu, conv.stride[0], conv.padding[0], quarters * in_w))
        self.first = nn.ModuleList(first)
        # Second convolution: channel j * 4w + q * w + g holds logical channel m * g + j of quarter q.
        width = multiplier * quarters * in_w
        w = conv2.weight.new_zeros(width, 1, *conv2.weight.shape[2:])
        b = conv2.weight.new_zeros(width)
        for q, (_, (weight, bias, _, _)) in enumerate(folded):
            for j in range(multiplier):
                at = j * quarters * in_w + q * in_w
                w[at:at + c_in] = weight[j::multiplier]
                b[at:at + c_in] = bias[j::multiplier]
        self.second = PieceConv(w, b, relu2, conv2.stride[0], conv2.padding[0], width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        if hh % 2 or ww % 2:
            raise ValueError(f"the packed local feature extractor needs an even feature map, not {hh}x{ww}")
        h, w = hh // 2, ww // 2
        quarters = x.reshape(n, c, 2, h, 2, w).permute(0, 2, 4, 1, 3, 5).reshape(n, 4 * c, h, w)
        y = self.second(torch.cat([conv(quarters) for conv in self.first], dim=1))
        oh, ow = y.shape[2:]
        y = y.reshape(n, self.multiplier, 2, 2, c, oh, ow).permute(0, 1, 4, 2, 5, 3, 6)
        return y.reshape(n, self.multiplier * c, 2 * oh, 2 * ow)


class PackedSpatial(nn.Module):
    """The spatial attention with its hidden width padded to a block: 1x1, two dilated 3x3, 1x1 to one map."""

    def __init__(self, spatial: nn.Module, pos: np.ndarray, width: int):
        super().__init__()
        body = spatial.body
        hidden = body[1][0].out_channels
        hidden_w = padded(hidden)
        ident = np.arange(hidden)
        self.convs = nn.ModuleList([PlacedConv(body[0], ident, hidden_w, pos, width),
                                    PlacedConv(body[1], ident, hidden_w, ident, hidden_w),
                                    PlacedConv(body[2], ident, hidden_w, ident, hidden_w)])
        last = body[3]
        weight = last.weight.new_zeros(1, hidden_w, 1, 1)
        weight[:, :hidden] = last.weight.detach()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", last.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return F.conv2d(x, self.weight, self.bias)


def _pad_modulator(modulator: nn.Module, pos: np.ndarray, width: int) -> nn.Module:
    """The modulator for channel c at physical position pos[c] of `width`: its first layers read those positions
    (zero weights elsewhere) and its channel weights are written there; padded channels are zero before and after
    (x * anything)."""
    mod = copy.deepcopy(modulator)
    idx = torch.as_tensor(pos, dtype=torch.long)
    fc1 = mod.channel.fc[0]
    new = nn.Linear(width, fc1.out_features)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, idx] = fc1.weight
        new.bias.copy_(fc1.bias)
    mod.channel.fc[0] = new
    fc2 = mod.channel.fc[3]
    new2 = nn.Linear(fc2.in_features, width)
    with torch.no_grad():
        new2.weight.zero_()
        new2.weight[idx] = fc2.weight
        new2.bias.zero_()
        new2.bias[idx] = fc2.bias
    mod.channel.fc[3] = new2
    mod.spatial = PackedSpatial(mod.spatial, pos, width)
    return mod


class PackedFaceEncoder(nn.Module):
    """`FaceEncoder` for inference: raw float pixels (N, 1, H, W * C) in [0, 255], each row its pixels' channels
    interleaved as they arrive (see `InterleavedStem`) -> (N, embed), the same numbers."""

    def __init__(self, encoder: FaceEncoder, widths: tuple[int, ...]):
        super().__init__()
        w = widths
        w0p = padded(w[0])
        multiplier = w[1] // w[0]
        stage2_w = w0p * multiplier
        if stage2_w != padded(w[1]):
            raise ValueError(f"packed face CNN: widths {w[0]} and {w[1]} do not pad consistently")
        self.stem = InterleavedStem(encoder.stem[0], w0p)
        pool = encoder.stem[1]
        self.pool = nn.MaxPool2d(pool.kernel_size, pool.stride, pool.padding)
        self.local = PackedLocal(encoder.local, w[0], multiplier)
        self.stage2 = PiecedStage(encoder.stage2, w[1], np.arange(w[0]), w0p, self.local.pos, stage2_w)
        self.modulator = _pad_modulator(encoder.modulator, self.local.pos, stage2_w)
        self.stage3 = PiecedStage(encoder.stage3, w[2], self.local.pos, stage2_w)
        self.stage4 = PiecedStage(encoder.stage4, w[3], self.stage3.pos_out, self.stage3.out_width)
        self.conv5 = PlacedConv(encoder.conv5, np.arange(w[4]), w[4], self.stage4.pos_out, self.stage4.out_width)
        self.out_features = w[4]
        self.flip_average = encoder.flip_average
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.flip_average:
            n, _, h, wc = pixels.shape
            c = self.stem.channels
            mirrored = pixels.reshape(n, 1, h, wc // c, c).flip(3).reshape(pixels.shape)
            both = self.embed(torch.cat((pixels, mirrored), dim=0))
            return (both[:n] + both[n:]) * 0.5
        return self.embed(pixels)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(pixels - 127.5))
        x = self.modulator(self.stage2(x)) + self.local(x)
        x = self.stage4(self.stage3(x))
        return self.conv5(x).mean(dim=(2, 3))


class RawFaceFrontEnd(nn.Module):
    """(B, T, H, W, C) uint8 crops -> (B * T, 1, H, W * C) float32 pixels in [0, 255], channels interleaved as
    stored: a reshape, no transpose (the scaling is in the stem)."""

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = faces.shape
        return faces.reshape(b * t, 1, h, w * c).float()


def packs(cfg) -> bool:
    """Whether the export packs this face CNN. Only depthwise units: a fused unit's first convolution is a dense
    3x3, and reading the whole tensor there would double the network's main cost to save a few copies (the live
    preset's frame encoder measured 30.1 ms packed against 16.9 ms as it is, ONNX Runtime, 1 thread)."""
    return not cfg.video_fused


def inference_form(model: AVTCA) -> AVTCA:
    """The model as the export writes it: a copy with the face CNN packed for ONNX Runtime where that pays
    (`packs`), else the model itself. Computes the same outputs either way."""
    if not packs(model.cfg):
        return model
    out = copy.deepcopy(model).eval()
    out.face_frontend = RawFaceFrontEnd()
    out.face_encoder = PackedFaceEncoder(model.face_encoder, model.cfg.video_widths)
    return out
