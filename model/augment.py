"""Training-time augmentation, batched in torch.

Face clips are augmented consistently: one flip and one rotation per clip, with only a small jitter between
its frames (the reference's clip-consistent flip and +-10 degree rotation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_DEGREES = 10.0
SCALE_RANGE = 0.10  # +-10 % zoom
SHIFT_RANGE = 0.08  # +-8 % of the crop
FRAME_JITTER = 0.25  # between frames of one clip, this share of the clip-level ranges


def _uniform(n: int, g: torch.Generator, scale: float) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2 - 1) * scale


def augment_faces(faces: torch.Tensor, g: torch.Generator, frames: int = 1, erase_p: float = 0.5) -> torch.Tensor:
    """(N, C, H, W) float pixels in [0, 255], N = clips * frames -> augmented, same shape.

    Frames of one clip are consecutive rows; they share flip and most of the geometric change. The random draws
    come from `g` on the CPU whatever device `faces` is on, so a GPU run augments exactly as a CPU run of the
    same seed would; the pixel work runs on the faces' device.
    """
    n, device = faces.shape[0], faces.device
    clips = n // frames
    per_clip = lambda scale: _uniform(clips, g, scale).repeat_interleave(frames)  # noqa: E731
    jitter = lambda scale: _uniform(n, g, scale * FRAME_JITTER)  # noqa: E731
    angle = (per_clip(ROTATION_DEGREES) + jitter(ROTATION_DEGREES)) * math.pi / 180
    scale = 1 + per_clip(SCALE_RANGE) + jitter(SCALE_RANGE)
    tx, ty = per_clip(SHIFT_RANGE) + jitter(SHIFT_RANGE), per_clip(SHIFT_RANGE) + jitter(SHIFT_RANGE)
    flip = torch.where(torch.rand(clips, generator=g) < 0.5, -1.0, 1.0).repeat_interleave(frames)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(device), list(faces.shape), align_corners=False)
    out = F.grid_sample(faces, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Brightness and contrast, per clip.
    contrast = (1 + per_clip(0.25)).view(n, 1, 1, 1).to(device)
    brightness = per_clip(20.0).view(n, 1, 1, 1).to(device)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + brightness).clamp(0, 255)
    # Random erasing: one rectangle per clip, same place in each frame.
    h, w = faces.shape[2:]
    erase = torch.rand(clips, generator=g) < erase_p
    area = 0.02 + torch.rand(clips, generator=g) * 0.18
    aspect = torch.exp(_uniform(clips, g, math.log(3.0)))
    eh = (torch.sqrt(area * aspect) * h).clamp(1, h - 1).long()
    ew = (torch.sqrt(area / aspect) * w).clamp(1, w - 1).long()
    y0 = (torch.rand(clips, generator=g) * (h - eh)).long()
    x0 = (torch.rand(clips, generator=g) * (w - ew)).long()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    mask = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + eh).view(-1, 1, 1)) & (xs >= x0.view(-1, 1, 1))
            & (xs < (x0 + ew).view(-1, 1, 1)) & erase.view(-1, 1, 1))
    mask = mask.repeat_interleave(frames, 0).unsqueeze(1).to(device)
    fill = (torch.rand(clips, generator=g) * 255).repeat_interleave(frames).view(n, 1, 1, 1).to(device)
    return torch.where(mask, fill, out)


def augment_audio(audio: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(B, samples) float PCM -> random gain (+-6 dB) and a little white noise (SNR 20-40 dB)."""
    b = audio.shape[0]
    gain = 10 ** (_uniform(b, g, 6.0) / 20).view(b, 1)
    out = audio * gain
    power = out.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-10)
    snr_db = (20 + torch.rand(b, 1, generator=g) * 20)
    noise = torch.randn(out.shape, generator=g) * torch.sqrt(power / 10 ** (snr_db / 10))
    return (out + noise).clamp(-1, 1)


def random_window(signal: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """A random `length`-sample window of a 1-D signal, zero-padded at the end if it is shorter."""
    if signal.shape[0] <= length:
        return F.pad(signal, (0, length - signal.shape[0]))
    start = int(torch.randint(0, signal.shape[0] - length + 1, (1,), generator=g))
    return signal[start:start + length]
