"""avtca-export: one self-contained, verified, self-describing ONNX file that the app's loader accepts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from avtca.app.modelfile import METADATA_KEY, ModelFileError, open_model, read_model_info
from avtca.model.checkpoint import save_checkpoint, weights_sha256
from avtca.model.config import preset
from avtca.model.export import FP32_TOLERANCE, example_inputs, main as export_main
from avtca.model.network import AVTCA

from conftest import ctrl_c_once


def fresh_live_model() -> AVTCA:
    torch.manual_seed(0)
    return AVTCA(preset("live")).eval()


def test_single_file_dynamic_batch_and_opset(live_onnx: Path):
    assert sorted(p.name for p in live_onnx.parent.iterdir()) == ["live.onnx"]  # no external-data file
    proto = onnx.load(str(live_onnx))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    first = [n for n in proto.graph.node if "audio" in n.input]
    # the front end is in the graph
    assert first and first[0].op_type in ("Unsqueeze", "Reshape", "Cast", "Conv", "Slice")
    for inp in proto.graph.input:
        assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis


def test_onnx_runtime_matches_pytorch_on_new_inputs(live_onnx: Path):
    model = fresh_live_model()
    session, _ = open_model(live_onnx)
    audio, faces, presence = example_inputs(model, 5, seed=99)
    got = session.run(None, {"audio": audio.numpy(), "faces": faces.numpy(), "presence": presence.numpy()})[0]
    with torch.no_grad():
        expected = model(audio, faces, presence).numpy()
    assert got.shape == (5, 7)
    assert np.abs(got - expected).max() <= FP32_TOLERANCE


def test_metadata_round_trip(live_onnx: Path):
    model = fresh_live_model()
    info = read_model_info(live_onnx)
    cfg = model.cfg
    assert info.labels == cfg.labels and info.preset == "live"
    assert (info.sample_rate_hz, info.window_samples, info.frames) == (16000, cfg.window_samples, cfg.frames)
    assert (info.face_size, info.face_channels) == (48, 1)
    assert info.trained is False and info.metadata["training"] is None
    assert info.metadata["config"] == json.loads(cfg.to_json())
    assert info.metadata["weights_sha256"] == weights_sha256(model)
    assert info.metadata["verification"]["max_abs_diff"] <= FP32_TOLERANCE
    assert info.metadata["export"]["opset"] >= 17


def test_export_cli_from_checkpoint_records_training(tmp_path: Path, capsys):
    model = fresh_live_model()
    ckpt = tmp_path / "model.pt"
    training = {"datasets": ["unit-test"], "label_mapping": {"calm": "neutral"}, "command": "pytest",
                "stages": [{"stage": "face"}, {"stage": "voice"}]}
    save_checkpoint(ckpt, model, training=training, evaluation={"accuracy": 0.5})
    out = tmp_path / "m.onnx"
    assert export_main([str(ckpt), "-o", str(out)]) == 0
    info = read_model_info(out)
    assert info.trained is True
    assert info.metadata["training"]["label_mapping"] == {"calm": "neutral"}
    assert info.metadata["evaluation"] == {"accuracy": 0.5}
    # A checkpoint from before the fusion stage exports, and the export says which outputs are not trained.
    assert (f"avtca-export: note: {ckpt} was trained through the face and voice stages only, without the fusion "
            "stage: its voice-only probabilities are trained, its fused and face-only ones are not"
            in capsys.readouterr().err)


def test_training_gap_names_the_outputs_a_partly_trained_model_lacks():
    from avtca.app.modelfile import training_gap
    from avtca.app.paths import DEFAULT_MODEL

    def meta(*stages: str) -> dict:
        return {"trained": True, "training": {"stages": [{"stage": s} for s in stages]}}

    assert "none of its probabilities is" in training_gap(meta("face"))
    assert training_gap(meta("face")).startswith("was trained through the face stage only")
    assert training_gap(meta("face", "voice", "fusion")) is None
    assert training_gap(meta("av")) is None
    assert training_gap({"trained": False, "training": None}) is None  # said as UNTRAINED instead
    assert training_gap(read_model_info(DEFAULT_MODEL).metadata) is None  # the shipped model went through all three


def test_export_cli_int8_checks_argmax_agreement(tmp_path: Path, capsys):
    out = tmp_path / "m8.onnx"
    assert export_main(["--init", "live", "-o", str(out), "--int8"]) == 0
    meta = read_model_info(out).metadata
    assert meta["export"]["int8"] is True
    assert meta["verification"]["agreement"] >= meta["verification"]["minimum"]
    assert "argmax agreement" in capsys.readouterr().out


def test_export_cli_missing_checkpoint(tmp_path: Path, capsys):
    assert export_main([str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err


def _strip_metadata(src: Path, dst: Path) -> None:
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))


def _edit_metadata(src: Path, dst: Path, **changes) -> None:
    proto = onnx.load(str(src))
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    meta.update(changes)
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(proto, str(dst))


def _drop_metadata_key(src: Path, dst: Path, key: str) -> None:
    proto = onnx.load(str(src))
    meta = json.loads(proto.metadata_props[0].value)
    del meta[key]
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(dst))


def test_bad_model_files_each_get_one_clear_error(live_onnx: Path, tmp_path: Path):
    missing = tmp_path / "missing.onnx"
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(live_onnx.read_bytes()[: live_onnx.stat().st_size // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a model\n" * 100)
    bare = tmp_path / "bare.onnx"
    _strip_metadata(live_onnx, bare)
    wrong_frames = tmp_path / "wrong_frames.onnx"
    _edit_metadata(live_onnx, wrong_frames, frames=15)
    wrong_labels = tmp_path / "wrong_labels.onnx"
    _edit_metadata(live_onnx, wrong_labels, labels=["happy", "sad"])
    no_labels = tmp_path / "no_labels.onnx"
    _drop_metadata_key(live_onnx, no_labels, "labels")

    cases = {
        missing: "does not exist",
        truncated: "not a readable ONNX model",
        garbage: "not a readable ONNX model",
        bare: "carries no avtca metadata",
        wrong_frames: "input 'faces'",
        wrong_labels: "names 2 labels",
        no_labels: "metadata lacks labels",
    }
    for path, message in cases.items():
        with pytest.raises(ModelFileError) as err:
            open_model(path)
        text = str(err.value)
        assert message in text and str(path) in text
        assert "\n" not in text


def test_the_parts_cut_from_the_file_reproduce_the_full_model(live_onnx: Path, tmp_path: Path):
    from avtca.app.modelfile import PARTS, open_parts

    model = fresh_live_model()
    info = read_model_info(live_onnx)
    assert info.metadata["parts"] == {p: {"inputs": list(i), "outputs": list(o)} for p, (i, o) in PARTS.items()}
    parts, why_not = open_parts(live_onnx, info)
    assert why_not is None
    frames, audio_features, head = parts
    audio, faces, presence = example_inputs(model, 4, seed=7)
    cfg = model.cfg
    crops = faces.reshape(-1, cfg.face_size, cfg.face_size, 1).numpy()
    emb = frames.run(None, {"crops": crops})[0]
    assert emb.shape == (32, 512)
    feats = audio_features.run(None, {"audio": audio.numpy()})[0]
    assert feats.shape == (4, cfg.n_mels, 1 + (cfg.window_samples - cfg.n_fft) // cfg.hop_length)
    got = head.run(None, {"audio_features": feats, "frame_embeddings": emb.reshape(4, cfg.frames, -1),
                          "presence": presence.numpy()})[0]
    full, _ = open_model(live_onnx)
    whole = full.run(None, {"audio": audio.numpy(), "faces": faces.numpy(), "presence": presence.numpy()})[0]
    assert np.array_equal(got, whole)  # the same nodes and weights, run in three steps
    with torch.no_grad():
        assert np.abs(got - model(audio, faces, presence).numpy()).max() <= FP32_TOLERANCE
        assert np.abs(emb - model.encode_frames(faces).reshape(32, -1).numpy()).max() <= 1e-3

    # A file that does not name its parts still runs, as the full model, and the app says why.
    older = tmp_path / "older.onnx"
    _drop_metadata_key(live_onnx, older, "parts")
    assert open_parts(older, read_model_info(older)) == (
        None, "older.onnx does not name its parts (exported before they were recorded)")
    # Edges the graph does not have: refused with the reason, not a crash.
    renamed = tmp_path / "renamed.onnx"
    _edit_metadata(live_onnx, renamed, parts={**info.metadata["parts"],
                                              "frames": {"inputs": ["pixels"], "outputs": ["embeddings"]}})
    other_edges = (None, "renamed.onnx names other parts or edges than this app cuts; re-export it with this "
                         "version's avtca-export")
    assert open_parts(renamed, read_model_info(renamed)) == other_edges
    _edit_metadata(live_onnx, renamed, parts=["frames", "audio", "head"])  # malformed: a list, not edges
    assert open_parts(renamed, read_model_info(renamed)) == other_edges
    # The metadata names the edges, but the graph has none called so: the reason, and the full model still runs.
    proto = onnx.load(str(live_onnx))
    for node in proto.graph.node:
        node.input[:] = ["pixels" if n == "crops" else n for n in node.input]
        node.output[:] = ["pixels" if n == "crops" else n for n in node.output]
    for info_proto in proto.graph.value_info:
        if info_proto.name == "crops":
            info_proto.name = "pixels"
    onnx.save(proto, str(renamed))
    parts, why_not = open_parts(renamed, read_model_info(renamed))
    assert parts is None and why_not.startswith("its parts could not be cut out of renamed.onnx (")


def test_an_int8_file_has_the_same_parts(tmp_path: Path):
    from avtca.app.modelfile import open_parts
    from avtca.model.export import export

    model = fresh_live_model()
    out = tmp_path / "live8.onnx"
    export(model, out, training=None, int8=True)
    (frames, audio_features, head), why_not = open_parts(out, read_model_info(out))
    assert why_not is None
    audio, faces, presence = example_inputs(model, 4, seed=8)
    emb = frames.run(None, {"crops": faces.reshape(-1, 48, 48, 1).numpy()})[0].reshape(4, 8, -1)
    feats = audio_features.run(None, {"audio": audio.numpy()})[0]
    got = head.run(None, {"audio_features": feats, "frame_embeddings": emb, "presence": presence.numpy()})[0]
    full, _ = open_model(out)
    whole = full.run(None, {"audio": audio.numpy(), "faces": faces.numpy(), "presence": presence.numpy()})[0]
    assert np.array_equal(got, whole)


def test_int8_leaves_the_audio_front_end_in_float(live_onnx: Path):
    from avtca.model.export import _frontend_nodes

    names = set(_frontend_nodes(live_onnx))
    ops = [n.op_type for n in onnx.load(str(live_onnx)).graph.node if n.name in names]
    # The windowed two-stage DFT, the power, the mel filters and the DCT (four MatMuls) and the log between them;
    # nothing of the face CNN.
    assert "Log" in ops and ops.count("MatMul") == 4 and "Conv" not in ops


def test_flip_average_is_in_the_exported_frame_encoder(tmp_path: Path):
    from avtca.app.modelfile import open_parts
    from avtca.model.export import export

    torch.manual_seed(0)
    model = AVTCA(preset("live", face_flip_average=True)).eval()
    out = tmp_path / "live.onnx"
    export(model, out, training=None)
    info = read_model_info(out)
    (frames, _, _), why_not = open_parts(out, info)
    assert why_not is None
    crops = np.random.default_rng(3).integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)
    e = frames.run(None, {"crops": crops})[0]
    e_mirror = frames.run(None, {"crops": np.ascontiguousarray(crops[:, :, ::-1])})[0]
    assert np.abs(e - e_mirror).max() <= 1e-4 * np.abs(e).max()
    assert json.loads(onnx.load(str(out)).metadata_props[0].value)["config"]["face_flip_average"] is True


def test_export_stopped_midway_leaves_the_model_there_as_it_was(tmp_path):
    """Ctrl-C while the export verifies its file (its graph already written in the temporary folder): one sentence,
    exit code 130, and the model the export would have replaced is untouched, with no partial file beside it."""
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the model exported before")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    returncode, stderr = ctrl_c_once([sys.executable, "-m", "avtca.model.export", "--init", "live", "-o", str(target)],
                                     lambda: bool(list(scratch.glob("*/fp32.onnx"))),
                                     env={**os.environ, "TMPDIR": str(scratch)})
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"avtca-export: stopped; {target} was not written (a file there is as "
                                               f"it was)")
    assert target.read_bytes() == b"the model exported before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "tmp"]
