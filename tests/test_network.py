"""Shapes through every block of AVT-CA for both presets, missing modalities, and head counts."""

from __future__ import annotations

import pytest
import torch

from avtca.model.config import AVTCAConfig, preset
from avtca.model.frontend import LOG_FLOOR, NORM_EPS, AudioFrontEnd, mel_filterbank, num_audio_frames
from avtca.model.network import AVTCA


def inputs(cfg: AVTCAConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, cfg.window_samples, generator=g) * 0.1
    faces = torch.randint(0, 256, (batch, cfg.frames, cfg.face_size, cfg.face_size, cfg.face_channels),
                          generator=g, dtype=torch.uint8)
    return audio, faces, torch.ones(batch, 2)


def audio_len_after(cfg: AVTCAConfig, n: int, blocks: int) -> int:
    for _ in range(blocks):
        n = (n - 2 - 2) // cfg.audio_pool_stride + 1  # valid k=3 conv, then max pool k=2
    return n


@pytest.mark.parametrize("name", ["live", "paper"])
def test_frontend_spectrum_is_torch_stft(name):
    cfg = preset(name)
    fe = AudioFrontEnd(cfg)
    pcm = torch.randn(2, cfg.window_samples) * 0.1
    spec = torch.stft(pcm, cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft), center=False,
                      return_complex=True).abs().pow(2)
    power = fe.power(pcm)
    torch.testing.assert_close(power, spec, rtol=1e-4, atol=1e-4 * float(spec.max()))
    # the features read the same spectrum through the mel matrix in the DFT's own order
    mel = torch.from_numpy(mel_filterbank(cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels))
    log_mel = torch.log(torch.matmul(mel, spec) + LOG_FLOOR)
    feats = torch.matmul(fe.dct, log_mel)
    if cfg.normalise_audio:
        mean = feats.mean(2, keepdim=True)
        feats = (feats - mean) / ((feats - mean).pow(2).mean(2, keepdim=True).sqrt() + NORM_EPS)
    torch.testing.assert_close(fe(pcm), feats, rtol=1e-4, atol=1e-4)
    # log-mel of digital silence is finite and normalises to zeros
    silent = fe(torch.zeros(1, cfg.window_samples))
    assert torch.isfinite(silent).all()


@pytest.mark.parametrize("name,batch", [("live", 2), ("paper", 1)])
def test_shapes_through_every_block(name, batch):
    cfg = preset(name)
    model = AVTCA(cfg).eval()
    audio, faces, presence = inputs(cfg, batch)
    w, t = cfg.video_widths, cfg.temporal_channels
    s = cfg.face_size // (cfg.stem_stride * cfg.stem_pool_stride)
    with torch.no_grad():
        feats = model.audio_frontend(audio)
        n_frames = num_audio_frames(cfg)
        assert feats.shape == (batch, cfg.n_mfcc or cfg.n_mels, n_frames)
        a1 = model.audio_stage1(feats)
        assert a1.shape == (batch, cfg.audio_channels[1], audio_len_after(cfg, n_frames, 2))
        a2 = model.audio_stage2(a1)
        assert a2.shape == (batch, cfg.audio_channels[3], audio_len_after(cfg, n_frames, 4))

        x = model.face_frontend(faces)
        assert x.shape == (batch * cfg.frames, cfg.face_channels, cfg.face_size, cfg.face_size)
        assert x.min() >= -1.0 and x.max() <= 1.0
        enc = model.face_encoder
        stem = enc.stem(x)
        assert stem.shape == (batch * cfg.frames, w[0], s, s)
        stage2 = enc.stage2(stem)
        assert stage2.shape == (batch * cfg.frames, w[1], s // 2, s // 2)
        assert enc.modulator(stage2).shape == stage2.shape
        assert enc.local(stem).shape == stage2.shape
        stage3 = enc.stage3(stage2)
        assert stage3.shape == (batch * cfg.frames, w[2], s // 4, s // 4)
        assert enc.stage4(stage3).shape == (batch * cfg.frames, w[3], s // 8, s // 8)
        emb = model.encode_frames(faces)
        assert emb.shape == (batch, cfg.frames, w[4])

        v1 = model.video_stage1(emb.transpose(1, 2))
        assert v1.shape == (batch, t[0], cfg.frames)
        a_tok, v_tok = a1.transpose(1, 2), v1.transpose(1, 2)
        assert model.it_audio(a_tok, v_tok).shape == a_tok.shape
        assert model.it_video(v_tok, a_tok).shape == v_tok.shape
        v2 = model.video_stage2(v1)
        assert v2.shape == (batch, t[1], cfg.frames)
        a2_tok = model.audio_proj(a2.transpose(1, 2))
        assert model.ct_audio(a2_tok, v2.transpose(1, 2)).shape == a2_tok.shape
        assert model.ct_video(v2.transpose(1, 2), a2_tok).shape == (batch, cfg.frames, t[1])

        probs = model(audio, faces, presence)
    assert probs.shape == (batch, cfg.num_classes)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(batch))


@pytest.mark.parametrize("strides", [(2, 1), (1, 1)])
def test_video_strides_keep_stages_3_and_4_at_the_resolution_before_them(strides):
    cfg = preset("live", video_strides=strides)
    model = AVTCA(cfg).eval()
    audio, faces, presence = inputs(cfg, 1)
    side = cfg.face_size // (cfg.stem_stride * cfg.stem_pool_stride) // 2
    enc = model.face_encoder
    with torch.no_grad():
        stage3 = enc.stage3(enc.stage2(enc.stem(model.face_frontend(faces))))
        stage4 = enc.stage4(stage3)
        probs = model(audio, faces, presence)
    assert stage3.shape[2:] == (side // strides[0],) * 2
    assert stage4.shape[2:] == (side // strides[0] // strides[1],) * 2
    # same weights as the preset's CNN: only the strides differ, so its checkpoints fit either
    assert [p.shape for p in model.parameters()] == [p.shape for p in AVTCA(preset("live")).parameters()]
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1))
    with pytest.raises(ValueError, match="video_strides must be two strides of 1 or 2"):
        preset("live", video_strides=(2, 3))


def test_presets_match_the_issue():
    paper, live = preset("paper"), preset("live")
    assert (paper.frames, paper.face_size, paper.face_channels) == (15, 224, 3)
    assert paper.video_widths == (29, 116, 232, 464, 1024) and paper.num_classes == 8
    assert live.sample_rate_hz == 16000 and live.face_channels == 1 and live.num_classes == 7
    assert AVTCAConfig.from_dict(live.to_dict()) == live
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_flip_average_gives_mirror_invariant_frame_embeddings():
    torch.manual_seed(0)
    encoder = AVTCA(preset("live", face_flip_average=True)).face_encoder.eval()
    x = torch.rand(4, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        e, mirrored = encoder(x), encoder(x.flip(3))
        tol = 1e-5 * float(e.abs().max())  # a fresh network's embeddings are small
        torch.testing.assert_close(e, mirrored, rtol=1e-4, atol=tol)
        torch.testing.assert_close(e, (encoder.embed(x) + encoder.embed(x.flip(3))) / 2, rtol=1e-4, atol=tol)
        assert (encoder.embed(x) - e).abs().max() > 1e3 * tol  # the crop alone is not mirror-invariant
        encoder.train()  # training sees each crop once (random flips come from augmentation)
        torch.manual_seed(1)
        a = encoder(x)
        torch.manual_seed(1)
        torch.testing.assert_close(a, encoder.embed(x))


@pytest.mark.parametrize("presence", [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
def test_missing_modality_gives_finite_probabilities(presence):
    cfg = preset("live")
    model = AVTCA(cfg).eval()
    audio, faces, _ = inputs(cfg, 2)
    zeros_a, zeros_f = torch.zeros_like(audio), torch.zeros_like(faces)
    p = torch.tensor([presence, presence])
    with torch.no_grad():
        for a, f in ((audio, faces), (zeros_a, zeros_f)):
            probs = model(a, f, p)
            assert torch.isfinite(probs).all()
            torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
        # A missing modality is an exact zero inside: its input content cannot change the output.
        other_a = torch.randn_like(audio) if presence[0] == 0 else audio
        other_f = torch.randint_like(faces, 0, 256) if presence[1] == 0 else faces
        torch.testing.assert_close(model(audio, faces, p), model(other_a, other_f, p))


@pytest.mark.parametrize("heads", [1, 4, 8])
def test_head_counts_are_configurable(heads):
    cfg = preset("live", it_heads=heads, ct_heads=heads)
    model = AVTCA(cfg).eval()
    for block in (model.it_audio, model.it_video, model.ct_audio, model.ct_video):
        assert block.attn.num_heads == heads
    with torch.no_grad():
        probs = model(*inputs(cfg, 2))
    assert probs.shape == (2, 7) and torch.isfinite(probs).all()


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="it_heads=3"):
        preset("live", it_heads=3)


def test_spec_augment_masks_only_while_training():
    cfg = preset("live")
    fe = AudioFrontEnd(cfg)
    pcm = torch.randn(4, cfg.window_samples) * 0.1
    clean = fe.eval()(pcm)
    fe.spec_augment = (2, 30, 2, 8)
    torch.testing.assert_close(fe.eval()(pcm), clean)  # evaluation and export never mask
    masked = fe.train()(pcm)
    zeroed = (masked == 0) & (clean != 0)
    assert zeroed.any() and zeroed.float().mean() < 0.6
    assert torch.equal(masked[~zeroed & (masked != 0)], clean[~zeroed & (masked != 0)])


def test_local_features_stay_fp32_under_cpu_autocast():
    """Under bf16 autocast on a CPU the local feature extractor computes in fp32: the same numbers as without
    autocast, forwards and backwards, while the stage beside it does run in bf16."""
    torch.manual_seed(0)
    enc = AVTCA(preset("live")).face_encoder.train()
    x = torch.randn(4, preset("live").video_widths[0], 24, 24)
    x32 = x.clone().requires_grad_(True)
    plain = enc.local(x32)
    plain.square().sum().backward()
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        mixed = enc.local(xa)
        assert enc.stage2(x).dtype == torch.bfloat16
    mixed.square().sum().backward()
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, plain, atol=1e-6)
    assert torch.allclose(xa.grad, x32.grad, atol=1e-5)
