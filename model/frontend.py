"""The numeric front end, inside the network so that it is exported with it.

Raw mono float32 PCM becomes log-mel (or MFCC) features; uint8 face crops become scaled float tensors.
The app feeds raw samples and raw crops and cannot drift from training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .config import AVTCAConfig

LOG_FLOOR = 1e-6  # added to mel power before the log: silence gives a finite constant, never -inf
NORM_EPS = 1e-3  # added to the per-band standard deviation: a constant band normalises to 0, never NaN


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate_hz: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular HTK mel filters, (n_mels, n_fft // 2 + 1) float32, each normalised to unit area."""
    n_bins = n_fft // 2 + 1
    bin_hz = np.linspace(0.0, sample_rate_hz / 2.0, n_bins)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate_hz / 2.0), n_mels + 2))
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (upper - lower)  # Slaney-style area normalisation
    return filters.astype(np.float32)


def dct_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """Orthonormal DCT-II, (n_mfcc, n_mels) float32."""
    k = np.arange(n_mfcc)[:, None]
    n = np.arange(n_mels)[None, :]
    basis = np.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[0] *= 1.0 / math.sqrt(2.0)
    return basis.astype(np.float32)


def dft_factors(n_fft: int) -> tuple[int, int]:
    """n_fft = n1 * n2 with n1 the largest divisor not above its square root (the cheapest two-stage split)."""
    n1 = max(d for d in range(1, int(math.isqrt(n_fft)) + 1) if n_fft % d == 0)
    return n1, n_fft // n1


def dft_stages(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided DFT of n_fft points as two small real matrix stages (Cooley-Tukey, n = n2 * i + j,
    k = k1 + n1 * k2), float32:
      stage 1 (n1, 2 * n1): the n1-point DFT over i for each j, columns [real k1, imaginary k1];
      stage 2 (n1, 2 * n2, 2 * K2): for each k1, the twiddled n2-point DFT over j of the complex stage-1
        output [real j, imaginary j] -> [real k2, imaginary k2], for the K2 = n2 // 2 + 1 values of k2
        that reach the bins 0..n_fft // 2.
    About 2 * n_fft * (n1 + n2) multiply-adds per frame against 2 * n_fft * (n_fft // 2 + 1) for the direct
    transform: 20 times fewer for 2048 points."""
    n1, n2 = dft_factors(n_fft)
    k2_count = n2 // 2 + 1
    i, k1 = np.arange(n1)[:, None], np.arange(n1)[None, :]
    a1 = 2 * math.pi * i * k1 / n1
    stage1 = np.concatenate([np.cos(a1), -np.sin(a1)], axis=1)
    j = np.arange(n2)[None, :, None]
    k = np.arange(n1)[:, None, None] + n1 * np.arange(k2_count)[None, None, :]  # (n1, 1, K2) bin numbers
    a2 = 2 * math.pi * j * k / n_fft  # (n1, n2, K2)
    wr, wi = np.cos(a2), -np.sin(a2)
    stage2 = np.concatenate([np.concatenate([wr, wi], 2), np.concatenate([-wi, wr], 2)], 1)
    return stage1.astype(np.float32), stage2.astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window, as torch.hann_window."""
    return (0.5 - 0.5 * np.cos(2 * math.pi * np.arange(n) / n)).astype(np.float32)


def num_audio_frames(cfg: AVTCAConfig) -> int:
    """STFT frames in one window (no centre padding)."""
    return 1 + (cfg.window_samples - cfg.n_fft) // cfg.hop_length


class AudioFrontEnd(nn.Module):
    """(B, samples) float32 PCM at cfg.sample_rate_hz -> (B, features, frames) log-mel or MFCC.

    The short-time Fourier transform is a two-stage matrix DFT (`dft_stages`) on Hann-windowed frames cut by
    strided slices: the same numbers as torch.stft(center=False) to float rounding, plain MatMuls in ONNX
    (ONNX Runtime's STFT kernel was 18 times slower than even a direct DFT convolution here), and about 20
    times fewer multiply-adds than that convolution at 2048 points. The mel matrix reads the stage-2 output
    in its own order, so no transpose back to bin order is needed.
    """

    def __init__(self, cfg: AVTCAConfig):
        super().__init__()
        self.n_fft, self.n_bins, self.hop_length = cfg.n_fft, cfg.n_fft // 2 + 1, cfg.hop_length
        self.n_frames = num_audio_frames(cfg)
        self.block = math.gcd(cfg.n_fft, cfg.hop_length)  # frames are cut from blocks of this many samples
        self.normalise = cfg.normalise_audio
        self.n1, self.n2 = dft_factors(cfg.n_fft)
        self.k2_count = self.n2 // 2 + 1
        stage1, stage2 = dft_stages(cfg.n_fft)
        self.register_buffer("window", torch.from_numpy(hann_window(cfg.n_fft)), persistent=False)
        self.register_buffer("stage1_t", torch.from_numpy(stage1.T.copy()), persistent=False)
        self.register_buffer("stage2", torch.from_numpy(stage2), persistent=False)
        mel = mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels)
        # The mel filters over the stage-2 output order (k1, k2) -> bin k1 + n1 * k2; bins past n_fft // 2 get 0.
        bins = (np.arange(self.n1)[:, None] + self.n1 * np.arange(self.k2_count)[None, :]).reshape(-1)
        mel_grid = np.where(bins[None, :] < self.n_bins, mel[:, np.minimum(bins, self.n_bins - 1)], 0.0)
        self.register_buffer("mel_grid", torch.from_numpy(mel_grid.T.astype(np.float32).copy()), persistent=False)
        dct = dct_matrix(cfg.n_mfcc, cfg.n_mels) if cfg.n_mfcc else np.eye(cfg.n_mels, dtype=np.float32)
        self.register_buffer("dct", torch.from_numpy(dct), persistent=False)
        self.out_features = dct.shape[0]
        # SpecAugment-style masking while training (set by the training stages; never active in eval or export):
        # (time masks, max frames each, feature masks, max features each).
        self.spec_augment: tuple[int, int, int, int] | None = None

    def frames(self, pcm: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, frames, n_fft) Hann-windowed frames, hop_length apart (no centre padding)."""
        b = pcm.shape[0]
        used = (self.n_frames - 1) * self.hop_length + self.n_fft
        blocks = pcm[:, :used].reshape(b, used // self.block, self.block)
        step = self.hop_length // self.block
        last = (self.n_frames - 1) * step
        parts = [blocks[:, j:j + last + 1:step] for j in range(self.n_fft // self.block)]  # each (B, frames, block)
        return torch.stack(parts, dim=2).reshape(b, self.n_frames, self.n_fft) * self.window

    def _power_grid(self, pcm: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, n1, frames, K2) power at bin k1 + n1 * k2, in the DFT's own order."""
        b, n1, n2 = pcm.shape[0], self.n1, self.n2
        y = self.frames(pcm.float()).reshape(b, self.n_frames, n1, n2)  # sample n2 * i + j at [i, j]
        z = torch.matmul(self.stage1_t, y)  # (B, N, 2 n1, n2): real k1 rows, then imaginary k1 rows, per j
        # k1 becomes the batch axis of stage 2; each row of n2 samples moves whole (a cheap transpose).
        z = z.reshape(b, self.n_frames, 2, n1, n2).permute(0, 3, 1, 2, 4).reshape(b, n1, self.n_frames, 2 * n2)
        s = torch.matmul(z, self.stage2)  # (B, n1, N, 2 K2): real parts, then imaginary parts
        return s[..., :self.k2_count].pow(2) + s[..., self.k2_count:].pow(2)

    def power(self, pcm: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, n_fft // 2 + 1, frames) power spectrum in bin order (as |torch.stft|^2)."""
        p = self._power_grid(pcm).permute(0, 3, 1, 2)  # (B, K2, n1, N): bin k1 + n1 k2 at [k2, k1]
        return p.reshape(pcm.shape[0], self.n1 * self.k2_count, self.n_frames)[:, :self.n_bins]

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        power = self._power_grid(pcm).transpose(1, 2)  # (B, N, n1, K2)
        power = power.reshape(pcm.shape[0], self.n_frames, self.n1 * self.k2_count)
        log_mel = torch.log(torch.matmul(power, self.mel_grid) + LOG_FLOOR).transpose(1, 2)  # (B, mels, N)
        feats = torch.matmul(self.dct, log_mel)  # (B, features, N)
        if self.normalise:
            mean = feats.mean(dim=2, keepdim=True)
            std = (feats - mean).pow(2).mean(dim=2, keepdim=True).sqrt()
            feats = (feats - mean) / (std + NORM_EPS)
        if self.training and self.spec_augment is not None:
            feats = spec_augment(feats, *self.spec_augment)
        return feats


def spec_augment(feats: torch.Tensor, time_masks: int, max_frames: int, feature_masks: int,
                 max_features: int) -> torch.Tensor:
    """Zero random spans of frames and of feature bands, independently per example: (B, F, N) -> (B, F, N)."""
    b, f, n = feats.shape
    keep = torch.ones(b, f, n, device=feats.device)
    for count, width, size, dim in ((time_masks, max_frames, n, 2), (feature_masks, max_features, f, 1)):
        for _ in range(count):
            w = torch.randint(0, width + 1, (b, 1), device=feats.device)
            start = (torch.rand(b, 1, device=feats.device) * (size - w).clamp_min(1)).long()
            pos = torch.arange(size, device=feats.device)[None, :]
            mask = ((pos >= start) & (pos < start + w)).float()  # (B, size)
            keep = keep * (1 - (mask[:, None, :] if dim == 2 else mask[:, :, None]))
    return feats * keep


class FaceFrontEnd(nn.Module):
    """(B, T, H, W, C) uint8 crops -> (B * T, C, H, W) float32 in [-1, 1]."""

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = faces.shape
        x = faces.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float()
        return x * (2.0 / 255.0) - 1.0
