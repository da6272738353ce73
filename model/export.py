"""avtca-export: a checkpoint -> one self-describing, verified ONNX file.

The file holds the whole network, front end included, with a dynamic batch axis, opset 18 and all weights
inline. Its metadata (key 'avtca', JSON) says what it needs and how it was made. After writing, the file is
checked by onnx.checker and run in ONNX Runtime against PyTorch on the same inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from ..app.modelfile import INPUT_NAMES, METADATA_FORMAT, METADATA_KEY, OUTPUT_NAME, SPLIT_SUFFIXES, open_model
from .checkpoint import git_commit, load_checkpoint, weights_sha256
from .config import PRESETS, preset
from .network import AVTCA
from .packed import inference_form

OPSET = 18
FP32_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over the check inputs, probabilities in [0, 1]
INT8_MIN_AGREEMENT = 0.90  # share of check inputs whose argmax the int8 model keeps
CHECK_SEED = 1234
MISSING_MODALITY = ("presence[:, 0] weights the voice and presence[:, 1] the face: 1 present, 0 missing; a missing "
                    "modality is multiplied to exact zeros inside the network, whatever its input holds")


class ExportCheckError(RuntimeError):
    """The exported file does not reproduce the PyTorch model."""


class FrameEncoder(torch.nn.Module):
    """The per-frame face CNN alone: (N, H, W, C) uint8 crops -> (N, embed) float32."""

    def __init__(self, model: AVTCA):
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.encode_frames(crops[:, None])[:, 0]


class AudioFeatures(torch.nn.Module):
    """The audio front end alone: (B, samples) float32 PCM -> (B, features, frames) normalised log-mel."""

    def __init__(self, model: AVTCA):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model.audio_frontend(audio)


class Head(torch.nn.Module):
    """Everything after the two front ends: (audio features, frame embeddings (B, T, embed), presence) ->
    probabilities."""

    def __init__(self, model: AVTCA):
        super().__init__()
        self.model = model

    def forward(self, audio_features: torch.Tensor, frame_emb: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model.logits_from_features(audio_features, frame_emb, presence), dim=-1)


def example_inputs(model: AVTCA, batch: int, seed: int = CHECK_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic check inputs: speech-like noise, random crops, and every presence combination."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, cfg.window_samples, generator=g) * 0.1
    faces = torch.randint(0, 256, (batch, cfg.frames, cfg.face_size, cfg.face_size, cfg.face_channels), generator=g,
                          dtype=torch.uint8)
    combos = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    presence = combos[torch.arange(batch) % 4]
    return audio, faces, presence


def build_metadata(model: AVTCA, training: dict | None, evaluation: dict | None, int8: bool) -> dict:
    cfg = model.cfg
    return {
        "format": METADATA_FORMAT,
        "preset": cfg.preset,
        "labels": list(cfg.labels),
        "sample_rate_hz": cfg.sample_rate_hz,
        "window_seconds": cfg.window_seconds,
        "window_samples": cfg.window_samples,
        "frames": cfg.frames,
        "face_size": cfg.face_size,
        "face_channels": cfg.face_channels,
        "inputs": {
            "audio": f"float32 [batch, {cfg.window_samples}]: mono PCM in [-1, 1] at {cfg.sample_rate_hz} Hz",
            "faces": f"uint8 [batch, {cfg.frames}, {cfg.face_size}, {cfg.face_size}, {cfg.face_channels}]: face crops "
                     f"spread evenly over the audio window, {'grayscale' if cfg.face_channels == 1 else 'RGB'}",
            "presence": "float32 [batch, 2]: " + MISSING_MODALITY,
        },
        "output": f"float32 [batch, {cfg.num_classes}]: class probabilities in label order",
        "config": cfg.to_dict(),
        "trained": training is not None,
        "training": training,
        "evaluation": evaluation,
        "weights_sha256": weights_sha256(model),
        "export": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
                   "torch": torch.__version__, "onnx": onnx.__version__, "opset": OPSET, "int8": int8},
    }


def torch_to_onnx(model: torch.nn.Module, path: Path, inputs: tuple[torch.Tensor, ...] | None = None,
                  names: tuple[str, ...] = INPUT_NAMES, output: str = OUTPUT_NAME) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    inputs = inputs if inputs is not None else example_inputs(model, 2)
    # The exporter narrates its optimisation passes on stdout/stderr; keep that for when it fails.
    chatter = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=False, opset_version=OPSET,
                          input_names=list(names), output_names=[output],
                          dynamic_shapes=tuple({0: batch} for _ in names), verbose=False)


def _write_metadata(path: Path, metadata: dict) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, sort_keys=True))
    proto.producer_name = "avtca-export"
    onnx.save(proto, str(path), save_as_external_data=False)


def _frontend_nodes(path: Path) -> list[str]:
    """Names of the nodes that compute the audio front end, which int8 must not touch (power spans 1e-12..1e4):
    everything downstream of the audio input up to (and including) its four MatMuls: the two DFT stages, the
    mel filters and the DCT."""
    graph = onnx.load(str(path)).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    excluded, frontier, matmuls = [], ["audio"], 0
    while frontier and matmuls < 4:
        nxt = []
        for tensor in frontier:
            for node in consumers.get(tensor, []):
                if node.name in excluded:
                    continue
                excluded.append(node.name)
                matmuls += node.op_type == "MatMul"
                nxt.extend(node.output)
        frontier = nxt
    return excluded


def _run_onnx(path: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    session, _ = open_model(path)
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)}
    return session.run([OUTPUT_NAME], feeds)[0]


def verify(model: AVTCA, path: Path, int8: bool) -> dict:
    """Run the file in ONNX Runtime and the model in PyTorch on the same inputs; raise if they disagree."""
    onnx.checker.check_model(str(path), full_check=True)
    checks = []
    for batch, seed in ((1, CHECK_SEED), (3, CHECK_SEED + 1), (64, CHECK_SEED + 2)):
        inputs = example_inputs(model, batch, seed)
        with torch.no_grad():
            expected = model(*inputs).numpy()
        checks.append((expected, _run_onnx(path, inputs)))
    if int8:
        expected = np.concatenate([e for e, _ in checks])
        got = np.concatenate([g for _, g in checks])
        agreement = float((expected.argmax(1) == got.argmax(1)).mean())
        if agreement < INT8_MIN_AGREEMENT:
            raise ExportCheckError(f"{path}: the int8 model keeps the argmax of only {agreement:.1%} of "
                                   f"{len(expected)} check inputs (need {INT8_MIN_AGREEMENT:.0%}); export fp32 instead")
        return {"check": "argmax agreement", "inputs": len(expected), "agreement": agreement,
                "minimum": INT8_MIN_AGREEMENT}
    diff = max(float(np.abs(e - g).max()) for e, g in checks)
    if not diff <= FP32_TOLERANCE:
        raise ExportCheckError(f"{path}: ONNX Runtime and PyTorch differ by {diff:.2e} in probability "
                               f"(tolerance {FP32_TOLERANCE:.0e}); the export is wrong, do not ship it")
    return {"check": "max abs probability difference", "inputs": sum(len(e) for e, _ in checks),
            "max_abs_diff": diff, "tolerance": FP32_TOLERANCE}


def split_paths(out: Path) -> dict[str, Path]:
    """Where the per-frame encoder, the audio front end and the head of `out` are written: beside it."""
    stem = out.name[:-len(".onnx")] if out.name.endswith(".onnx") else out.name
    return {part: out.with_name(stem + suffix) for part, suffix in SPLIT_SUFFIXES.items()}


def export_split(model: AVTCA, out: Path, metadata: dict) -> dict:
    """The per-frame face encoder, the audio front end and the head as three more files, checked together
    against the full model.

    The app encodes each face crop once, when a window first uses it; per tick it computes the audio features
    once and runs the head on the batch of three (fused, voice only, face only). Exact: the face CNN sees each
    frame on its own, and the three rows share one audio window.
    """
    import onnxruntime as ort

    paths = split_paths(out)
    cfg = model.cfg
    audio, faces, presence = example_inputs(model, 3, CHECK_SEED + 3)
    crops = faces.reshape(-1, cfg.face_size, cfg.face_size, cfg.face_channels)
    torch_to_onnx(FrameEncoder(inference_form(model)), paths["frames"], (crops[:4],), ("crops",), "embeddings")
    torch_to_onnx(AudioFeatures(model), paths["audio"], (audio[:2],), ("audio",), "audio_features")
    with torch.no_grad():
        emb = model.encode_frames(faces)
        feats = model.audio_frontend(audio)
    torch_to_onnx(Head(model), paths["head"], (feats[:2], emb[:2], presence[:2]),
                  ("audio_features", "frame_embeddings", "presence"), OUTPUT_NAME)
    for part, path in paths.items():
        _write_metadata(path, {**metadata, "part": part, "full_model": out.name})
        onnx.checker.check_model(str(path), full_check=True)
    sessions = {part: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for part, path in paths.items()}
    got_emb = sessions["frames"].run(None, {"crops": crops.numpy()})[0].reshape(emb.shape)
    got_feats = sessions["audio"].run(None, {"audio": audio.numpy()})[0]
    got = sessions["head"].run(None, {"audio_features": got_feats, "frame_embeddings": got_emb,
                                      "presence": presence.numpy()})[0]
    with torch.no_grad():
        expected = model(audio, faces, presence).numpy()
    diff = float(np.abs(got - expected).max())
    if not diff <= FP32_TOLERANCE:
        raise ExportCheckError(f"{out}: the split encoder, audio features and head differ from the full model by "
                               f"{diff:.2e} (tolerance {FP32_TOLERANCE:.0e})")
    return {"files": [p.name for p in paths.values()], "max_abs_diff_vs_full": diff, "tolerance": FP32_TOLERANCE}


def export(model: AVTCA, out: Path, *, training: dict | None, evaluation: dict | None = None,
           int8: bool = False, split: bool = False) -> dict:
    """Write `model` to one verified ONNX file at `out`; returns the metadata written into it."""
    model = model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = build_metadata(model, training, evaluation, int8)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        torch_to_onnx(inference_form(model), fp32)
        _write_metadata(fp32, metadata)
        staged = fp32
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            staged = Path(tmp) / "int8.onnx"
            quantize_dynamic(str(fp32), str(staged), weight_type=QuantType.QInt8,
                             nodes_to_exclude=_frontend_nodes(fp32), op_types_to_quantize=["MatMul", "Gemm"])
            _write_metadata(staged, metadata)
        metadata["verification"] = verify(model, staged, int8)
        _write_metadata(staged, metadata)
        out.write_bytes(staged.read_bytes())
    if split:
        metadata["split"] = export_split(model, out, metadata)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avtca-export", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint written by avtca-train")
    source.add_argument("--init", choices=sorted(PRESETS), help="export a freshly initialised, UNTRAINED preset")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of MatMul/Gemm weights")
    parser.add_argument("--eval-json", type=Path, help="avtca-eval JSON to record as the model's evaluation")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --init")
    parser.add_argument("--no-split", action="store_true",
                        help="skip the per-frame encoder, audio features and head files the app uses for cheap ticks")
    args = parser.parse_args(argv)

    evaluation = json.loads(args.eval_json.read_text()) if args.eval_json else None
    try:
        if args.init:
            torch.manual_seed(args.seed)
            model, training = AVTCA(preset(args.init)), None
        else:
            model, state = load_checkpoint(args.checkpoint)
            training = state.get("training")
            evaluation = evaluation or state.get("evaluation")
        meta = export(model, args.output, training=training, evaluation=evaluation, int8=args.int8,
                      split=not (args.no_split or args.int8))
    except (FileNotFoundError, ValueError, ExportCheckError) as e:
        print(f"avtca-export: {e}", file=sys.stderr)
        return 1
    v = meta["verification"]
    figure = f"argmax agreement {v['agreement']:.1%}" if args.int8 else f"max |diff| {v['max_abs_diff']:.1e}"
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, preset {meta['preset']}, "
          f"{'trained' if meta['trained'] else 'UNTRAINED'}); ONNX Runtime vs PyTorch on {v['inputs']} inputs: {figure}")
    if "split" in meta:
        print(f"wrote {', '.join(meta['split']['files'])}: the three parts vs the full model, max |diff| "
              f"{meta['split']['max_abs_diff_vs_full']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
