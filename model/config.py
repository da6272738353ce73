"""The AVT-CA configuration: one frozen dataclass, two named presets.

Torch-free on purpose: the live app and the model loader read configs without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# The live label set: the seven classes FER2013 and RAVDESS share (RAVDESS "calm" maps to neutral).
LIVE_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
# RAVDESS's own eight classes, in the order of its emotion codes 01..08.
RAVDESS_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


@dataclass(frozen=True)
class AVTCAConfig:
    """Every number that shapes the network and its numeric front end; stored in every checkpoint."""

    preset: str
    labels: tuple[str, ...]
    # Audio front end (inside the network): raw mono PCM -> log-mel or MFCC.
    sample_rate_hz: int
    window_seconds: float
    n_fft: int
    hop_length: int
    n_mels: int
    n_mfcc: int  # 0: feed log-mel bands to the audio branch; >0: that many MFCCs (the paper's choice)
    normalise_audio: bool  # per-window, per-band mean/variance normalisation of the features
    # Audio branch (paper III-A1): two stages of two Conv1d blocks.
    audio_channels: tuple[int, int, int, int]  # outputs of the four conv blocks
    audio_pool_stride: int  # 1 in the reference (kernel 2, stride 1); 2 widens the receptive field
    # Video input: T face crops of one clip, uint8 (B, T, H, W, C).
    frames: int
    face_size: int
    face_channels: int  # 1 grayscale, 3 RGB
    # Per-frame EfficientFace-style CNN (paper III-A2).
    video_widths: tuple[int, int, int, int, int]  # stem, stage 2, stage 3, stage 4, final 1x1 conv
    video_repeats: tuple[int, int, int]  # inverted residual blocks in stages 2, 3, 4
    stem_stride: int
    stem_pool_stride: int
    # Temporal convolutions after the per-frame CNN.
    temporal_channels: tuple[int, int]  # stage 1 and stage 2 widths (the audio stage widths match)
    # Fusion (paper III-B, III-C).
    it_heads: int  # intermediate transformer heads (IT-1, IT-4, ...)
    ct_heads: int  # cross-attention heads (CT-1, CT-4, ...)
    mlp_ratio: int = 2
    video_fused: bool = False  # dense 3x3 convolutions in the inverted residual units instead of depthwise ones
    # At inference, each frame's embedding is the mean of the embeddings of the crop and its mirror image
    # (the face stage trains with random flips); twice the per-frame cost, nothing in training.
    face_flip_average: bool = False
    # Strides of the first units of stages 3 and 4 (1 keeps that stage at the resolution before it). Stage 2
    # always halves, as the local feature extractor's output, added to it, does.
    video_strides: tuple[int, int] = (2, 2)
    dropout: float = 0.1
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.audio_channels[1] != self.audio_channels[3]:
            raise ValueError("audio_channels[1] and [3] must match: stage 2 returns to the stage 1 width")
        if self.audio_channels[1] % self.it_heads or self.temporal_channels[0] % self.it_heads:
            raise ValueError(f"it_heads={self.it_heads} must divide both stage-1 widths")
        if self.audio_channels[3] % self.ct_heads or self.temporal_channels[1] % self.ct_heads:
            raise ValueError(f"ct_heads={self.ct_heads} must divide both stage-2 widths")
        if len(self.video_strides) != 2 or not set(self.video_strides) <= {1, 2}:
            raise ValueError(f"video_strides must be two strides of 1 or 2 (stages 3 and 4), not {self.video_strides}")
        if self.face_channels not in (1, 3):
            raise ValueError(f"face_channels must be 1 or 3, not {self.face_channels}")

    @property
    def window_samples(self) -> int:
        """Samples in one audio window at the model's rate."""
        return int(round(self.window_seconds * self.sample_rate_hz))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AVTCAConfig":
        """Rebuild a config from `to_dict()` output (lists become tuples again)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def replace(self, **changes) -> "AVTCAConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, AVTCAConfig] = {
    # The paper's network with the reference's numbers (../shared/AVTCA.md): 22.05 kHz, 3.6 s, 10 MFCCs,
    # 15 RGB frames of 224x224, widths [29, 116, 232, 464, 1024], 8 RAVDESS classes, 8 heads.
    "paper": AVTCAConfig(
        preset="paper",
        labels=RAVDESS_LABELS,
        sample_rate_hz=22050,
        window_seconds=3.6,
        n_fft=2048,
        hop_length=512,
        n_mels=128,
        n_mfcc=10,
        normalise_audio=False,
        audio_channels=(64, 128, 256, 128),
        audio_pool_stride=1,
        frames=15,
        face_size=224,
        face_channels=3,
        video_widths=(29, 116, 232, 464, 1024),
        video_repeats=(4, 8, 4),
        stem_stride=2,
        stem_pool_stride=2,
        temporal_channels=(64, 128),
        it_heads=8,
        ct_heads=8,
    ),
    # Sized for a laptop CPU in real time and for FER2013 faces (48x48 grayscale): 16 kHz, 3 s,
    # 64 log-mel bands, 8 frames, 7 classes. The stem keeps full resolution because 48 px is small.
    "live": AVTCAConfig(
        preset="live",
        labels=LIVE_LABELS,
        sample_rate_hz=16000,
        window_seconds=3.0,
        n_fft=400,  # 25 ms
        hop_length=160,  # 10 ms
        n_mels=64,
        n_mfcc=0,
        normalise_audio=True,
        audio_channels=(64, 128, 256, 128),
        audio_pool_stride=2,
        frames=8,
        face_size=48,
        face_channels=1,
        video_widths=(32, 128, 256, 512, 512),
        video_repeats=(3, 6, 3),
        stem_stride=1,
        stem_pool_stride=2,
        temporal_channels=(64, 128),
        it_heads=4,
        ct_heads=4,
        video_fused=True,
    ),
}


def parse_overrides(base: AVTCAConfig, pairs: list[str]) -> dict:
    """FIELD=VALUE strings -> config overrides, each value read as the type the field holds in `base`
    (a comma list for tuples, true/false for flags). Raises ValueError naming the bad pair."""
    out: dict = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not hasattr(base, name):
            fields = ", ".join(f.name for f in dataclasses.fields(base) if f.name not in ("preset", "notes"))
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {fields}")
        if name in ("preset", "notes"):
            raise ValueError(f"--set {pair!r}: {name} is not an architecture setting")
        current = getattr(base, name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false"):
                    raise ValueError
                value = text.lower() == "true"
            elif isinstance(current, tuple):
                kind = type(current[0]) if current else str
                value = tuple(kind(v.strip()) for v in text.split(","))
                if name != "labels" and len(value) != len(current):
                    raise ValueError
            else:
                value = type(current)(text)
        except ValueError:
            raise ValueError(f"--set {pair!r}: {name} holds {current!r} in the preset; give a value of that "
                             f"form") from None
        out[name] = value
    return out


def preset(name: str, **overrides) -> AVTCAConfig:
    """The named preset, optionally with some fields replaced (e.g. head counts for an ablation)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
