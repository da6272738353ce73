"""AVT-CA: audio-video transformer fusion with cross attention (Venkatraman et al.; ../shared/AVTCA.md).

Inputs of the whole network (and of the exported ONNX model):
  audio     (B, samples) float32 mono PCM at cfg.sample_rate_hz, cfg.window_samples long
  faces     (B, T, H, W, C) uint8 face crops spread over the same window
  presence  (B, 2) float32: [voice present, face present], 1 or 0 (values between mix the modalities)
Output: (B, classes) float32 probabilities.

A missing modality is marked by its presence weight: the network multiplies that modality's features by it
right after the front end (audio) or the per-frame CNN (video), so an absent modality is an exact zero
inside the network whatever its input holds. Modality dropout in training uses the same mechanism.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import (
    AudioConvBlock,
    CrossAttention,
    CrossModalBlock,
    LocalFeatureExtractor,
    Modulator,
    TemporalConvBlock,
    conv_bn,
    inverted_residual_stage,
)
from .config import AVTCAConfig
from .frontend import AudioFrontEnd, FaceFrontEnd


class FaceEncoder(nn.Module):
    """Per-frame EfficientFace-style CNN (paper III-A2): (N, C, H, W) float -> (N, embed) float."""

    def __init__(self, cfg: AVTCAConfig):
        super().__init__()
        w = cfg.video_widths
        r = cfg.video_repeats
        self.stem = nn.Sequential(conv_bn(cfg.face_channels, w[0], 3, cfg.stem_stride),
                                  nn.MaxPool2d(3, cfg.stem_pool_stride, padding=1))
        self.local = LocalFeatureExtractor(w[0], w[1])
        self.stage2 = inverted_residual_stage(w[0], w[1], r[0], cfg.video_fused)
        self.modulator = Modulator(w[1])
        self.stage3 = inverted_residual_stage(w[1], w[2], r[1], cfg.video_fused, cfg.video_strides[0])
        self.stage4 = inverted_residual_stage(w[2], w[3], r[2], cfg.video_fused, cfg.video_strides[1])
        self.conv5 = conv_bn(w[3], w[4], 1)
        self.out_features = w[4]
        self.flip_average = cfg.face_flip_average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_average and not self.training:
            n = x.shape[0]
            both = self.embed(torch.cat((x, x.flip(3)), dim=0))
            return (both[:n] + both[n:]) * 0.5
        return self.embed(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, w0, H/s, W/s)
        x = self.modulator(self.stage2(x)) + self.local(x)  # (N, w1, H/2s, W/2s)
        x = self.stage4(self.stage3(x))  # (N, w3, H/8s, W/8s) with both video_strides 2
        return self.conv5(x).mean(dim=(2, 3))  # (N, w4)


class AVTCA(nn.Module):
    """The full network: front ends, audio and video branches, IT fusion, cross attention, classifier."""

    def __init__(self, cfg: AVTCAConfig):
        super().__init__()
        self.cfg = cfg
        a = cfg.audio_channels
        t = cfg.temporal_channels
        # Audio branch (III-A1).
        self.audio_frontend = AudioFrontEnd(cfg)
        self.audio_stage1 = nn.Sequential(AudioConvBlock(self.audio_frontend.out_features, a[0], cfg.audio_pool_stride),
                                          AudioConvBlock(a[0], a[1], cfg.audio_pool_stride))
        self.audio_stage2 = nn.Sequential(AudioConvBlock(a[1], a[2], cfg.audio_pool_stride),
                                          AudioConvBlock(a[2], a[3], cfg.audio_pool_stride))
        # Video branch (III-A2): per-frame CNN, then temporal convolutions over the clip.
        self.face_frontend = FaceFrontEnd()
        self.face_encoder = FaceEncoder(cfg)
        self.video_stage1 = nn.Sequential(TemporalConvBlock(self.face_encoder.out_features, t[0]),
                                          TemporalConvBlock(t[0], t[0]))
        self.video_stage2 = nn.Sequential(TemporalConvBlock(t[0], t[1]), TemporalConvBlock(t[1], t[1]))
        # Intermediate transformer fusion between stage 1 and stage 2 (III-B).
        self.it_audio = CrossModalBlock(a[1], t[0], cfg.it_heads, cfg.mlp_ratio, cfg.dropout)
        self.it_video = CrossModalBlock(t[0], a[1], cfg.it_heads, cfg.mlp_ratio, cfg.dropout)
        # Cross attention after stage 2 (III-C); both streams are projected to one width first.
        self.audio_proj = nn.Linear(a[3], t[1]) if a[3] != t[1] else nn.Identity()
        self.ct_audio = CrossAttention(t[1], cfg.ct_heads, cfg.dropout)
        self.ct_video = CrossAttention(t[1], cfg.ct_heads, cfg.dropout)
        # Prediction (III-D).
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(t[1], cfg.num_classes)

    def encode_frames(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, C) uint8 -> (B, T, embed) per-frame embeddings; frames are independent here."""
        b, t = faces.shape[:2]
        return self.face_encoder(self.face_frontend(faces)).reshape(b, t, -1)

    def logits_from_embeddings(self, audio: torch.Tensor, frame_emb: torch.Tensor,
                               presence: torch.Tensor) -> torch.Tensor:
        """(B, samples), (B, T, embed), (B, 2) -> (B, classes) logits: everything after the per-frame CNN."""
        return self.logits_from_features(self.audio_frontend(audio), frame_emb, presence)

    def logits_from_features(self, audio_features: torch.Tensor, frame_emb: torch.Tensor,
                             presence: torch.Tensor) -> torch.Tensor:
        """(B, F, N) front-end features, (B, T, embed), (B, 2) -> (B, classes) logits: everything after the two
        per-input front ends (the audio features and the per-frame CNN)."""
        voice_w = presence[:, 0, None, None]
        face_w = presence[:, 1, None, None]
        a = audio_features * voice_w  # (B, F, N)
        v = (frame_emb * face_w).transpose(1, 2)  # (B, embed, T)
        a = self.audio_stage1(a)  # (B, a1, La)
        v = self.video_stage1(v)  # (B, t0, T)
        a_tok, v_tok = a.transpose(1, 2), v.transpose(1, 2)  # (B, La, a1), (B, T, t0)
        a_tok, v_tok = a_tok + self.it_audio(a_tok, v_tok), v_tok + self.it_video(v_tok, a_tok)
        a = self.audio_stage2(a_tok.transpose(1, 2))  # (B, a3, La')
        v = self.video_stage2(v_tok.transpose(1, 2))  # (B, t1, T)
        a_tok, v_tok = self.audio_proj(a.transpose(1, 2)), v.transpose(1, 2)  # (B, La', t1), (B, T, t1)
        a_tok, v_tok = self.ct_audio(a_tok, v_tok), self.ct_video(v_tok, a_tok)
        fused = a_tok.amax(dim=1) + v_tok.amax(dim=1)  # (B, t1)
        return self.classifier(self.dropout(fused))

    def logits(self, audio: torch.Tensor, faces: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(audio, self.encode_frames(faces), presence)

    def forward(self, audio: torch.Tensor, faces: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(audio, faces, presence), dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
