"""A short real training run: it checkpoints, resumes, exports and evaluates; DDP keeps ranks in lockstep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avtca.app.modelfile import read_model_info
from avtca.model import evaluate, train
from avtca.model.card import machine
from avtca.model.checkpoint import load_checkpoint
from avtca.model.export import main as export_main
from avtca.model.trainer import native_bf16

from conftest import ctrl_c_once, shared

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("AVTCA_CACHE")
    os.environ["AVTCA_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["AVTCA_CACHE"]
    else:
        os.environ["AVTCA_CACHE"] = old


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, cache) -> dict[str, Path]:
    """The live recipe's three stages, each for one epoch on a slice of the real data."""
    fer = shared("fer2013")
    voices = shared("ravdess", "Audio_Speech_16k_Actors_01-20")
    out = tmp_path_factory.mktemp("runs")
    common = ["--epochs", "1", "--max-items", "96", "--no-progress", "--threads", "2"]
    assert train.main(["--stage", "face", "--faces", f"fer2013={fer}", "--out", str(out / "face"), *common]) == 0
    assert train.main(["--stage", "voice", "--init", str(out / "face" / "best.pt"), "--voice", f"ravdess={voices}",
                       "--out", str(out / "voice"), *common]) == 0
    assert train.main(["--stage", "fusion", "--init", str(out / "voice" / "best.pt"), "--faces", f"fer2013={fer}",
                       "--voice", f"ravdess={voices}", "--pairs-per-voice", "1", "--extra-faces", "16",
                       "--out", str(out / "fusion"), *common]) == 0
    return {"face": out / "face", "voice": out / "voice", "fusion": out / "fusion", "fer": fer, "voices": voices}


def test_stages_write_checkpoints_curves_and_records(recipe):
    for stage in ("face", "voice", "fusion"):
        run = recipe[stage]
        for name in ("best.pt", "last.pt", "history.json", "curves.png", "confusion.png", "summary.json"):
            assert (run / name).is_file(), run / name
        assert len(json.loads((run / "history.json").read_text())) == 1
    model, state = load_checkpoint(recipe["fusion"] / "best.pt")
    stages = [s["stage"] for s in state["training"]["stages"]]
    assert stages == ["face", "voice", "fusion"]
    assert state["training"]["label_mapping"]["voice_label_mapping"]["calm"] == "neutral"
    assert state["optimizer"] is not None and state["config"]["preset"] == "live"
    fusion_val = json.loads((recipe["fusion"] / "summary.json").read_text())["validation"]
    assert set(fusion_val["modes"]) == {"fused", "face_only", "voice_only"}
    # The face CNN is frozen in the fusion stage: its weights are the face stage's.
    face_model, _ = load_checkpoint(recipe["face"] / "best.pt")
    for (k, a), b in zip(face_model.face_encoder.state_dict().items(), model.face_encoder.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_continues_from_last_epoch(recipe, capsys):
    args = ["--stage", "voice", "--init", str(recipe["face"] / "best.pt"), "--voice", f"ravdess={recipe['voices']}",
            "--out", str(recipe["voice"]), "--epochs", "2", "--max-items", "96", "--no-progress"]
    assert train.main(args) == 0
    assert "resuming from" in capsys.readouterr().out
    assert [h["epoch"] for h in json.loads((recipe["voice"] / "history.json").read_text())] == [1, 2]
    # The record keeps both sittings: epoch 1 from the first run, epoch 2 from this one.
    _, state = load_checkpoint(recipe["voice"] / "last.pt")
    here = {"precision": "fp32", "machine": machine("cpu")}
    assert state["training"]["stages"][-1]["sittings"] == [{"first_epoch": 1, **here}, {"first_epoch": 2, **here}]
    # Asked again for 2 epochs, the run has nothing left to train and records no third sitting.
    assert train.main(args) == 0
    _, state = load_checkpoint(recipe["voice"] / "last.pt")
    assert len(state["training"]["stages"][-1]["sittings"]) == 2


def test_ctrl_c_says_where_the_run_stands_and_the_same_command_resumes(cache, tmp_path):
    """Ctrl-C after the first epoch: one sentence (no traceback) naming the checkpoint of the finished epoch,
    exit code 130; the same command then trains the rest from there."""
    out = tmp_path / "voice"
    command = [sys.executable, "-m", "avtca.model.train", "--stage", "voice", "--voice",
               f"ravdess={shared('ravdess', 'Audio_Speech_16k_Actors_01-20')}", "--epochs", "2", "--max-items",
               "96", "--no-progress", "--threads", "1", "--out", str(out)]
    returncode, stderr = ctrl_c_once(command, (out / "last.pt").is_file)  # written whole when epoch 1 ends
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"avtca-train: stopped; {out / 'last.pt'} holds epoch 1 of 2; the same "
                                               f"command resumes from there (--no-resume starts over)")
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout and "[voice] epoch 2/2" in again.stdout
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]


def test_trained_checkpoint_exports_and_evaluates_alike(recipe, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    assert export_main([str(recipe["fusion"] / "best.pt"), "-o", str(onnx_path)]) == 0
    info = read_model_info(onnx_path)
    assert info.trained and [s["stage"] for s in info.metadata["training"]["stages"]] == ["face", "voice", "fusion"]
    results = {}
    for flag, path in (("--model", onnx_path), ("--checkpoint", recipe["fusion"] / "best.pt")):
        out = tmp_path / f"{flag[2:]}.json"
        assert evaluate.main([flag, str(path), "--dataset", "ravdess", "--root", str(recipe["voices"]),
                              "--actors", "20", "--json", str(out), "--plots", str(tmp_path / "plots")]) == 0
        results[flag] = json.loads(out.read_text())
    onnx_r, torch_r = results["--model"], results["--checkpoint"]
    assert onnx_r["n"] == torch_r["n"] == 60
    assert abs(onnx_r["accuracy"] - torch_r["accuracy"]) <= 1 / 60  # at most one borderline clip may flip
    for key in ("accuracy", "macro_f1", "uar", "n", "per_class_recall", "confusion_matrix", "label_mapping"):
        assert key in onnx_r
    assert np.asarray(onnx_r["confusion_matrix"]).sum() == 60
    assert (tmp_path / "plots" / "confusion_ravdess.png").is_file()


def test_paired_evaluation_reports_three_modes(recipe, tmp_path):
    out = tmp_path / "paired.json"
    assert evaluate.main(["--checkpoint", str(recipe["fusion"] / "best.pt"), "--dataset", "paired",
                          "--face-root", str(recipe["fer"]), "--voice-root", str(recipe["voices"]),
                          "--actors", "19-20", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"fused", "face_only", "voice_only"} <= set(r)
    assert r["fused"]["n"] == r["face_only"]["n"] == r["voice_only"]["n"] == 120
    assert r["notes"]["face_duplicates_of_training_removed"] > 0


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "avtca.model.train", "--epochs", "1", "--no-progress", "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_ddp_two_gloo_processes_stay_in_lockstep(recipe, tmp_path):
    # 96 clips are 3 batches of 32: each rank takes one, and the third is left out so that neither rank waits
    # for the other's all-reduce on a step it never takes.
    result = torchrun(["--stage", "voice", "--init", str(recipe["face"] / "best.pt"), "--voice",
                       f"ravdess={recipe['voices']}", "--max-items", "96", "--out", str(tmp_path / "ddp")])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]  # the failing rank's traceback too
    digests = re.findall(r"rank (\d)/2 weights sha256 ([0-9a-f]{64})", result.stdout)
    assert sorted(r for r, _ in digests) == ["0", "1"]
    assert digests[0][1] == digests[1][1]
    assert (tmp_path / "ddp" / "best.pt").is_file()
    # Rank 0 alone speaks: each line of the run once.
    assert result.stdout.count("[voice] preset live") == 1
    assert result.stdout.count("[voice] epoch 1/1") == 1
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(history) == 1


def test_ddp_refuses_fewer_batches_than_processes(tmp_path):
    result = torchrun(["--stage", "face", "--faces", f"fer2013={shared('fer2013')}", "--max-items", "64",
                       "--out", str(tmp_path / "ddp")])
    assert result.returncode != 0
    assert ("2 processes need at least 2 batches an epoch, and the face stage has 1; start fewer processes or give "
            "it more data") in result.stderr
    assert not (tmp_path / "ddp" / "last.pt").exists()


def test_each_process_builds_its_own_batches_and_only_those(monkeypatch):
    """Under torchrun a rank builds the rank-th batch of each run of `world` batches and no other (a short last run
    is left out on every rank), and each batch holds what one process alone builds at that place: the same items,
    augmentation and pairing."""
    from avtca.model.config import preset
    from avtca.model.network import AVTCA
    from avtca.model.stages import FaceData, PairData, VoiceData, face_batches, my_batches, pair_batches

    starts = range(0, 80, 10)  # 8 batches
    assert [[s for s, *_ in my_batches(starts, 0, 0, (rank, 3))] for rank in range(3)] == [[0, 30], [10, 40], [20, 50]]
    assert [s for s, *_ in my_batches(range(0, 50, 10), 0, 0, (0, 1))] == [0, 10, 20, 30, 40]
    assert [list(my_batches(range(1), 0, 0, (rank, 2))) for rank in range(2)] == [[], []]

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5 * 128 + 7, 16, 16, 1), dtype=np.uint8)
    faces = FaceData(images, np.arange(len(images)) % 7, images[:0], np.zeros(0, np.int64))
    torch.manual_seed(0)
    model = AVTCA(preset("live"))
    cfg = model.cfg
    voices = VoiceData([rng.standard_normal(cfg.window_samples + 500).astype(np.float32) * 0.1 for _ in range(14)],
                       np.arange(14) % 7, [], np.zeros(0, np.int64))
    emb = rng.standard_normal((21, 3, model.face_encoder.out_features)).astype(np.float16)
    pairs = PairData(voices, emb, np.arange(21) % 7, emb[:, 0], np.arange(21) % 7)
    builders = {"faces": lambda share: face_batches(faces, 2, 4, 7, 0.2, share=share),
                "pairs": lambda share: pair_batches(pairs, model, 16, 2, 4, extra_faces=5, mixup=0.4, share=share)}
    from avtca.model import stages

    built = []  # one entry per batch whose pixels or voice windows a process computed
    for helper in ("augment_faces", "train_windows"):
        real = getattr(stages, helper)
        monkeypatch.setattr(stages, helper, lambda *a, _real=real, **k: built.append(1) or _real(*a, **k))
    for name, build in builders.items():
        alone = list(build((0, 1)))
        assert len(alone) in (5, 7), name
        for world in (2, 3):
            for rank in range(world):
                built.clear()
                mine = list(build((rank, world)))
                assert len(mine) == len(alone) // world == len(built), (name, rank, world)
                for k, batch in enumerate(mine):
                    expected = alone[rank + k * world]
                    assert all(torch.equal(a, b) for a, b in zip(batch, expected) if a is not None), (name, rank, k)


def test_extra_face_only_rows_are_the_models_face_only_output():
    """The fusion stage's extra face-only clips score exactly as the network does with the voice marked missing."""
    from avtca.model.config import preset
    from avtca.model.network import AVTCA
    from avtca.model.stages import FusionHead

    torch.manual_seed(0)
    model = AVTCA(preset("live")).eval()
    head = FusionHead(model).eval()
    cfg = model.cfg
    audio = torch.randn(2, cfg.window_samples) * 0.1
    emb = torch.randn(2, cfg.frames, model.face_encoder.out_features)
    extra = torch.randn(3, cfg.frames, model.face_encoder.out_features)
    presence = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    with torch.no_grad():
        logits = head(audio, emb, presence, extra)
        expected_pairs = model.logits_from_embeddings(audio, emb, presence)
        loud = torch.randn(3, cfg.window_samples)  # any audio: a missing voice is exact zeros inside
        expected_extra = model.logits_from_embeddings(loud, extra, torch.tensor([[0.0, 1.0]]).expand(3, 2))
    assert logits.shape == (5, cfg.num_classes)
    assert torch.allclose(logits[:2], expected_pairs, atol=1e-5)
    assert torch.allclose(logits[2:], expected_extra, atol=1e-5)


def test_voice_mixup_mixes_windows_and_targets_alike():
    """Each mixed window is lambda * its own window + (1 - lambda) * another of the batch, lambda >= 0.5, and its
    soft target gives the same weights to the two labels."""
    from avtca.model.stages import VoiceData, voice_batches

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(4000).astype(np.float32) * 0.1 for _ in range(40)]
    data = VoiceData(clips, np.arange(40) % 7, [], np.zeros(0, np.int64))
    plain = next(voice_batches(data, 3000, epoch=2, seed=5))
    audio, y, soft = next(voice_batches(data, 3000, epoch=2, seed=5, classes=7, mixup=0.4))
    assert torch.equal(y, plain[1])
    assert torch.allclose(soft.sum(1), torch.ones(len(y)))
    base = plain[0]
    for i in range(len(y)):
        # find the partner and lambda from the audio alone, then check the target says the same
        fits = []
        for j in range(len(y)):
            d = base[i] - base[j]
            lam = float(((audio[i] - base[j]) @ d) / (d @ d)) if j != i else 1.0
            fits.append((float((audio[i] - lam * base[i] - (1 - lam) * base[j]).abs().max()), j, lam))
        err, j, lam = min(fits)
        assert err < 1e-5 and lam >= 0.5 - 1e-6
        expected = torch.zeros(7)
        expected[y[i]] += lam
        expected[y[j]] += 1 - lam
        assert torch.allclose(soft[i], expected, atol=1e-4)


def test_face_mixup_mixes_images_and_targets_alike():
    """As for voices: each mixed image is lambda * its own augmented image + (1 - lambda) * another of the batch,
    and its soft target (here mixed FER+-style distributions) gives the two the same weights."""
    from avtca.model.stages import FaceData, face_batches

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 48, 48, 1), dtype=np.uint8)
    votes = rng.dirichlet(np.ones(7), 40).astype(np.float32)
    data = FaceData(images, np.arange(40) % 7, images[:0], np.zeros(0, np.int64), train_soft=votes)
    base, y0, soft0 = next(face_batches(data, epoch=1, seed=4))
    # The device argument moves the work, not the draws: the same batch on the CPU named explicitly.
    assert torch.equal(next(face_batches(data, epoch=1, seed=4, device="cpu"))[0], base)
    pixels, y, soft = next(face_batches(data, epoch=1, seed=4, classes=7, mixup=0.2))
    assert torch.equal(y, y0) and soft.shape == soft0.shape == (40, 7)
    flat, ref = pixels.reshape(40, -1), base.reshape(40, -1)
    for i in range(40):
        d = ref[i] - ref
        lams = [float(((flat[i] - ref[j]) @ d[j]) / (d[j] @ d[j])) if j != i else 1.0 for j in range(40)]
        errs = [float((flat[i] - lam * ref[i] - (1 - lam) * ref[j]).abs().max()) for j, lam in enumerate(lams)]
        j = int(np.argmin(errs))
        assert errs[j] < 1e-2 and lams[j] >= 0.5 - 1e-6
        assert torch.allclose(soft[i], lams[j] * soft0[i] + (1 - lams[j]) * soft0[j], atol=1e-4)


def test_fusion_loss_with_soft_targets():
    """One-hot soft targets give plain cross-entropy; extra face rows keep their label-smoothed hard loss."""
    import torch.nn.functional as F

    from avtca.model.stages import LABEL_SMOOTHING, fusion_loss

    logits = torch.randn(6, 7)

    class Fixed(torch.nn.Module):
        def forward(self, audio, emb, presence, extra=None):
            return logits if extra is not None else logits[:4]

    y, extra_y = torch.tensor([0, 3, 3, 6]), torch.tensor([2, 5])
    onehot = F.one_hot(y, 7).float()
    loss, _, targets = fusion_loss(Fixed(), (None, None, None, y, onehot, None, None))
    assert torch.allclose(loss, F.cross_entropy(logits[:4], y))
    loss, _, targets = fusion_loss(Fixed(), (None, None, None, y, onehot, torch.zeros(2), extra_y))
    expected = (F.cross_entropy(logits[:4], y, reduction="sum")
                + F.cross_entropy(logits[4:], extra_y, label_smoothing=LABEL_SMOOTHING, reduction="sum")) / 6
    assert torch.allclose(loss, expected) and torch.equal(targets, torch.cat([y, extra_y]))


def test_pair_mixup_mixes_voice_and_face_with_the_same_weights():
    from avtca.model.config import preset
    from avtca.model.network import AVTCA
    from avtca.model.stages import PairData, VoiceData, pair_batches

    torch.manual_seed(0)
    model = AVTCA(preset("live"))
    cfg = model.cfg
    rng = np.random.default_rng(1)
    voices = VoiceData([rng.standard_normal(cfg.window_samples + 500).astype(np.float32) * 0.1 for _ in range(14)],
                       np.arange(14) % 7, [], np.zeros(0, np.int64))
    faces = rng.standard_normal((21, 3, model.face_encoder.out_features)).astype(np.float16)
    data = PairData(voices, faces, np.arange(21) % 7, faces[:, 0], np.arange(21) % 7)
    base = next(pair_batches(data, model, 1, epoch=0, seed=3))
    audio, emb, presence, y, soft, *_ = next(pair_batches(data, model, 1, epoch=0, seed=3, mixup=0.4))
    b = len(y) // 4
    assert base[4] is None and soft.shape == (4 * b, 7) and torch.equal(presence, base[2])
    for i in range(b):
        d = base[0][i] - base[0]
        lams = [float(((audio[i] - base[0][j]) @ d[j]) / (d[j] @ d[j])) if j != i else 1.0 for j in range(b)]
        errs = [float((audio[i] - lam * base[0][i] - (1 - lam) * base[0][j]).abs().max()) for j, lam in enumerate(lams)]
        j = int(np.argmin(errs))
        lam = lams[j]
        assert errs[j] < 1e-5 and lam >= 0.5 - 1e-6
        assert torch.allclose(emb[i], lam * base[1][i] + (1 - lam) * base[1][j], atol=1e-4)
        expected = torch.zeros(7)
        expected[y[i]] += lam
        expected[y[j]] += 1 - lam
        assert torch.allclose(soft[i], expected, atol=1e-4) and torch.allclose(soft[i + b], soft[i])


def test_fusion_embeddings_are_cached_per_face_cnn(tmp_path, monkeypatch):
    """The second request for the same face CNN, crops, views and seed reads the cache and gets the same numbers;
    other weights get their own entry."""
    from avtca.model.config import preset
    from avtca.model.network import AVTCA
    from avtca.model.stages import cached_frame_embeddings, frame_embeddings

    monkeypatch.setenv("AVTCA_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = AVTCA(preset("live")).eval()
    crops = np.random.default_rng(2).integers(0, 256, (6, 48, 48, 1), dtype=np.uint8)
    first = cached_frame_embeddings(model, crops, 3, seed=4)
    assert len(list(tmp_path.glob("embeddings-*.npy"))) == 1
    assert np.array_equal(first, frame_embeddings(model, crops, 3, seed=4))
    again = cached_frame_embeddings(model, crops, 3, seed=4)
    assert np.array_equal(again, first) and len(list(tmp_path.glob("embeddings-*.npy"))) == 1
    with torch.no_grad():
        model.face_encoder.conv5[0].weight.mul_(1.5)
    other = cached_frame_embeddings(model, crops, 3, seed=4)
    assert len(list(tmp_path.glob("embeddings-*.npy"))) == 2 and not np.array_equal(other, first)


def test_fusion_embeddings_are_what_the_app_computes(tmp_path):
    """The fusion stage's embeddings come from the exported per-frame encoder in ONNX Runtime: they match PyTorch on
    the same real FER2013 crops (flip averaging on), and each augmented view is a uint8 image, as a camera's is."""
    from PIL import Image

    from avtca.model.augment import augment_faces
    from avtca.model.config import preset
    from avtca.model.network import AVTCA
    from avtca.model.stages import frame_embeddings, scale_pixels, to_pixels

    files = sorted(shared("fer2013", "test", "happy").glob("*.jpg"))[:5] + \
        sorted(shared("fer2013", "test", "angry").glob("*.jpg"))[:5]
    crops = np.stack([np.asarray(Image.open(f).convert("L"))[..., None] for f in files])
    torch.manual_seed(0)
    model = AVTCA(preset("live")).eval()
    model.face_encoder.flip_average = True
    got = frame_embeddings(model, crops, 3, seed=7).astype(np.float32)
    g = torch.Generator().manual_seed(7)
    pixels = to_pixels(crops)
    with torch.no_grad():
        for v in range(3):
            view = pixels if v == 0 else augment_faces(pixels, g, erase_p=0.0).round().clamp(0, 255)
            expected = model.face_encoder(scale_pixels(view)).numpy()
            assert np.abs(got[:, v] - expected).max() < 2e-3 * np.abs(expected).max()  # float16 storage
    assert np.abs(got[:, 1] - got[:, 0]).max() > 0.05 * np.abs(got[:, 0]).max()  # the views differ
    assert model.face_encoder.training is False


def test_set_shapes_a_new_network_and_is_refused_with_init(recipe):
    args = train.parser().parse_args(["--stage", "face", "--out", "unused", "--set", "stem_pool_stride=1",
                                      "--set", "video_widths=16,64,128,256,512"])
    model, _ = train.build_model(args)
    assert model.cfg.stem_pool_stride == 1 and model.cfg.video_widths == (16, 64, 128, 256, 512)
    enc = model.face_encoder.eval()
    with torch.no_grad():
        assert enc.stem(torch.zeros(2, 1, 48, 48)).shape == (2, 16, 48, 48)  # no max pool: full resolution
        assert enc(torch.zeros(2, 1, 48, 48)).shape == (2, 512)
    with pytest.raises(ValueError, match="video_widths holds"):
        train.build_model(train.parser().parse_args(["--stage", "face", "--out", "x", "--set", "video_widths=8,8"]))
    with pytest.raises(ValueError, match="--set shapes a new network"):
        train.build_model(train.parser().parse_args(["--stage", "voice", "--out", "x", "--init",
                                                     str(recipe["face"] / "best.pt"), "--set", "dropout=0.2"]))


def test_face_from_puts_another_face_cnn_into_the_init_checkpoint(recipe, tmp_path):
    from avtca.model.checkpoint import save_checkpoint
    from avtca.model.config import preset
    from avtca.model.network import AVTCA

    voice_model, voice_state = load_checkpoint(recipe["voice"] / "best.pt")
    torch.manual_seed(5)
    other = AVTCA(preset("live"))  # a face CNN unlike the recipe's: other weights, its own record
    record = {"datasets": ["fer2013=elsewhere"], "label_mapping": {"face_label_mapping": {"fear": "fearful"}},
              "stages": [{"stage": "face", "command": "avtca-train --stage face --out elsewhere"}]}
    save_checkpoint(tmp_path / "other.pt", other, training=record)
    args = train.parser().parse_args(["--stage", "fusion", "--out", "x", "--init", str(recipe["voice"] / "best.pt"),
                                      "--face-from", str(tmp_path / "other.pt")])
    model, earlier = train.build_model(args)
    for name, tensor in model.state_dict().items():
        source = other if name.startswith("face_encoder.") else voice_model
        assert torch.equal(tensor, source.state_dict()[name]), name
    assert earlier["stages"] == [*voice_state["training"]["stages"], record["stages"][0]]
    assert "fer2013=elsewhere" in earlier["datasets"] and set(voice_state["training"]["datasets"]) <= set(
        earlier["datasets"])
    # Taken from the recipe's own face run, whose stage the voice checkpoint already lists: listed once.
    args.face_from = recipe["face"] / "best.pt"
    assert train.build_model(args)[1]["stages"] == voice_state["training"]["stages"]

    # A narrower face CNN with the same embedding width: the model takes its shape, the rest stays the voice's.
    narrow = AVTCA(preset("live", video_widths=(16, 64, 128, 256, 512), video_repeats=(2, 3, 2),
                          video_strides=(2, 1)))
    save_checkpoint(tmp_path / "narrow.pt", narrow, training=None)
    args.face_from = tmp_path / "narrow.pt"
    model, _ = train.build_model(args)
    assert model.cfg.video_widths == (16, 64, 128, 256, 512) and model.cfg.video_repeats == (2, 3, 2)
    assert model.cfg.video_strides == (2, 1)
    assert model.cfg.replace(video_widths=voice_model.cfg.video_widths, video_repeats=voice_model.cfg.video_repeats,
                             video_strides=voice_model.cfg.video_strides) == voice_model.cfg
    for name, tensor in model.state_dict().items():
        source = narrow if name.startswith("face_encoder.") else voice_model
        assert torch.equal(tensor, source.state_dict()[name]), name
    with torch.no_grad():  # and it runs
        clip = torch.zeros(1, model.cfg.frames, 48, 48, 1, dtype=torch.uint8)
        probs = model.eval()(torch.zeros(1, model.cfg.window_samples), clip, torch.ones(1, 2))
    assert probs.shape == (1, model.cfg.num_classes) and abs(float(probs.sum()) - 1) < 1e-5
    save_checkpoint(tmp_path / "wide.pt", AVTCA(preset("live", video_widths=(32, 128, 256, 512, 256))), training=None)
    args.face_from = tmp_path / "wide.pt"
    with pytest.raises(ValueError, match="gives 256-wide embeddings where the --init checkpoint's temporal layers "
                                         "read 512"):
        train.build_model(args)
    with pytest.raises(ValueError, match="give --init too"):
        train.build_model(train.parser().parse_args(["--stage", "fusion", "--out", "x", "--face-from",
                                                     str(tmp_path / "other.pt")]))


def test_a_wrong_ferplus_folder_is_named_before_any_image_loads(tmp_path, capsys):
    # tmp_path holds no images either: the votes are what the run reports first.
    assert train.main(["--stage", "face", "--faces", f"fer2013={tmp_path}", "--ferplus", str(tmp_path),
                       "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "fer2013new.csv is missing; --ferplus needs fer2013new.csv and ferplus_to_fer2013_jpg.csv" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_teacher_face_cnn_gives_its_flip_averaged_probabilities_as_soft_targets(recipe, tmp_path, capsys):
    from avtca.model.evaluate import Predictor, fer_images
    from avtca.model.stages import FrameClassifier, distilled_targets, teacher_probabilities

    teacher = recipe["face"] / "best.pt"
    crops = fer_images(Predictor.checkpoint(teacher), recipe["fer"], "test").crops[:40]
    probs, labels = teacher_probabilities(teacher, crops)
    # What the checkpoint's own face CNN and head give in PyTorch, mirror images averaged.
    model, state = load_checkpoint(teacher)
    classifier = FrameClassifier(model)
    classifier.load_state_dict(state["extra"]["stage_module"])
    model.face_encoder.flip_average = True
    with torch.no_grad():
        expected = torch.softmax(classifier.eval()(torch.from_numpy(crops).permute(0, 3, 1, 2).float()), 1).numpy()
    assert probs.shape == (40, 7) and labels == model.cfg.labels
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)

    with pytest.raises(ValueError, match="reads 48x48x1 face crops, this network 40x40x1; a teacher must read the "
                                         "same crops"):
        teacher_probabilities(teacher, np.ascontiguousarray(crops[:, :40, :40]))

    y = np.array([0, 3])
    targets = distilled_targets(y, probs[:2], 0.25)
    np.testing.assert_allclose(targets, 0.75 * np.eye(7)[y] + 0.25 * probs[:2], atol=1e-6)

    out = tmp_path / "student"
    assert train.main(["--stage", "face", "--faces", f"fer2013={recipe['fer']}", "--teacher", str(teacher),
                       "--teacher-weight", "0.25", "--out", str(out), "--epochs", "1", "--max-items", "96",
                       "--no-progress", "--threads", "2"]) == 0
    assert re.search(rf"the teacher {re.escape(str(teacher))} agrees with \d+\.\d% of the training labels; soft "
                     rf"targets with weight 0.25", capsys.readouterr().out)
    record = load_checkpoint(out / "best.pt")[1]["training"]["stages"][-1]["data"]
    assert record["teacher"] == str(teacher) and record["teacher_weight"] == 0.25
    assert 0 <= record["teacher_train_accuracy"] <= 1

    # Refused in one sentence: a checkpoint without a face head, or another stage.
    assert train.main(["--stage", "face", "--faces", f"fer2013={recipe['fer']}", "--teacher",
                       str(recipe["fusion"] / "best.pt"), "--out", str(tmp_path / "x"), "--max-items", "8",
                       "--no-progress"]) == 1
    assert "is not a face-stage checkpoint (avtca-train --stage face writes one)" in capsys.readouterr().err
    assert train.main(["--stage", "voice", "--voice", f"ravdess={recipe['voices']}", "--teacher", str(teacher),
                       "--out", str(tmp_path / "y")]) == 2
    assert "--teacher gives soft targets to the face stage alone" in capsys.readouterr().err


def test_bf16_trains_in_bf16_only_where_the_device_has_bf16_kernels(recipe, tmp_path, capsys):
    """On an AVX2-only CPU bf16 is emulated, about 10 times slower than fp32: --bf16 then trains in fp32, says so
    and records it. Where the CPU has bf16 kernels, the same run trains in bf16."""
    out = tmp_path / "face"
    assert train.main(["--stage", "face", "--faces", f"fer2013={recipe['fer']}", "--out", str(out), "--epochs", "1",
                       "--max-items", "96", "--no-progress", "--threads", "2", "--bf16"]) == 0
    logged = capsys.readouterr().out
    _, state = load_checkpoint(out / "best.pt")
    record = state["training"]["stages"][-1]
    assert record["machine"] == machine("cpu") and machine("cpu").endswith(
        f" cores, {torch.backends.cpu.get_cpu_capability()}")
    fp32 = json.loads((recipe["face"] / "history.json").read_text())[0]  # the same run without --bf16
    this = json.loads((out / "history.json").read_text())[0]
    if native_bf16("cpu"):
        assert record["precision"] == "bf16" and "trains in fp32" not in logged
        assert this["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)
        assert this["train_loss"] != fp32["train_loss"]
    else:
        assert record["precision"] == "fp32"
        assert (f"--bf16: this CPU has no bfloat16 kernels (PyTorch reports "
                f"{torch.backends.cpu.get_cpu_capability()}); emulated bf16 would train many times slower than "
                "fp32, so this run trains in fp32") in logged
        assert this["train_loss"] == pytest.approx(fp32["train_loss"], rel=1e-5)


@pytest.mark.skipif(train.cpp_compiler() is None,
                    reason="torch.compile on the CPU needs a C++ compiler (g++); none is on PATH")
def test_compiled_training_takes_the_eager_step_and_saves_plain_weights(recipe, tmp_path, monkeypatch):
    import torch._inductor.config

    # Dropout's masks from torch's own generator, as in eager mode, so the two steps can be compared exactly.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    out = tmp_path / "face"
    assert train.main(["--stage", "face", "--faces", f"fer2013={recipe['fer']}", "--out", str(out), "--epochs", "1",
                       "--max-items", "96", "--no-progress", "--threads", "2", "--compile"]) == 0
    eager = json.loads((recipe["face"] / "history.json").read_text())[0]
    compiled = json.loads((out / "history.json").read_text())[0]
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
    assert compiled["train_accuracy"] == eager["train_accuracy"]
    model, state = load_checkpoint(out / "best.pt")
    assert not any("_orig_mod" in k for k in state["extra"]["stage_module"])  # the module's own names
    eager_model, _ = load_checkpoint(recipe["face"] / "best.pt")
    ours, theirs = dict(model.named_parameters()), dict(eager_model.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, p in ours.items():  # one warm-up step at lr 2e-6: the same update up to rounding
        assert torch.allclose(p, theirs[name], atol=1e-5), name


def test_compile_without_a_cpp_compiler_is_refused_in_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, c++ or clang++
    monkeypatch.delenv("CXX", raising=False)
    assert train.main(["--stage", "face", "--faces", f"fer2013={tmp_path}", "--out", str(tmp_path / "run"),
                       "--compile"]) == 2
    assert ("--compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; install one (Debian: apt-get "
            "install g++) or leave out --compile") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
