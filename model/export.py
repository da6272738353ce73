"""avtca-export: a checkpoint -> one self-describing, verified ONNX file.

The file holds the whole network, front end included, with a dynamic batch axis, opset 18 and all weights
inline. Its metadata (key 'avtca', JSON) says what it needs, how it was made, and which tensors bound the three
parts the app runs apart (`compose`). After writing, the file is checked by onnx.checker and run in ONNX Runtime
against PyTorch on the same inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from ..app.cli import json_file, output_file
from ..app.modelfile import INPUT_NAMES, METADATA_FORMAT, METADATA_KEY, OUTPUT_NAME, PARTS, open_model, training_gap
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
        "parts": {part: {"inputs": list(ins), "outputs": list(outs)} for part, (ins, outs) in PARTS.items()},
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


def _renamed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> tuple[list, list, list]:
    """The nodes, initializers and value infos of `graph` with every name but those in `keep` prefixed."""
    rename = lambda name: name if not name or name in keep else prefix + name  # noqa: E731
    nodes, initializers, infos = [], [], []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        nodes.append(copy)
    for source, out in ((graph.initializer, initializers), (graph.value_info, infos)):
        for item in source:
            copy = type(item)()
            copy.CopyFrom(item)
            copy.name = rename(item.name)
            out.append(copy)
    return nodes, initializers, infos


def compose(frames: onnx.ModelProto, audio: onnx.ModelProto, head: onnx.ModelProto, cfg) -> onnx.ModelProto:
    """The full model as one graph made of the three parts: faces (B, T, H, W, C) are reshaped to crops (B*T, ...)
    for the per-frame encoder, whose embeddings are reshaped to (B, T, embed) for the head; the audio part reads
    the audio input. Each part's tensors keep their names at its edges (`PARTS`), so the app can cut the parts
    back out of this one file (`open_parts` in app/modelfile.py); everything inside a part is prefixed with
    its name."""
    from onnx import TensorProto, helper

    if any(list(m.opset_import) != list(frames.opset_import) for m in (audio, head)):
        raise ExportCheckError("the three parts were exported with different opsets; they cannot form one graph")
    edges = {name for ins, outs in PARTS.values() for name in (*ins, *outs)}
    pieces = {name: _renamed(model.graph, f"{name}/", edges)
              for name, model in (("frames", frames), ("audio", audio), ("head", head))}
    crop_shape = helper.make_tensor("glue/crop_shape", TensorProto.INT64, [4],
                                    [-1, cfg.face_size, cfg.face_size, cfg.face_channels])
    any_width = helper.make_tensor("glue/any_width", TensorProto.INT64, [1], [-1])
    to_crops = helper.make_node("Reshape", ["faces", "glue/crop_shape"], ["crops"], name="glue/crops")
    to_clips = [helper.make_node("Shape", ["faces"], ["glue/batch_frames"], name="glue/batch_frames", start=0, end=2),
                helper.make_node("Concat", ["glue/batch_frames", "glue/any_width"], ["glue/clip_shape"],
                                 name="glue/clip_shape", axis=0),
                helper.make_node("Reshape", ["embeddings", "glue/clip_shape"], ["frame_embeddings"],
                                 name="glue/frame_embeddings")]
    nodes = [to_crops, *pieces["frames"][0], *pieces["audio"][0], *to_clips, *pieces["head"][0]]
    initializers = [crop_shape, any_width, *(i for p in pieces.values() for i in p[1])]
    infos = [i for p in pieces.values() for i in p[2]]
    # The parts' edges inside the graph, typed as the parts declare them, so that a part cut back out of the
    # graph has typed inputs and outputs. The encoder's batch is every frame of every clip.
    for edge in (*frames.graph.input, *frames.graph.output, *(i for i in head.graph.input if i.name != "presence")):
        infos.append(onnx.ValueInfoProto())
        infos[-1].CopyFrom(edge)
        if edge.name in ("crops", "embeddings"):
            infos[-1].type.tensor_type.shape.dim[0].dim_param = "crops"
    inputs = [audio.graph.input[0], helper.make_tensor_value_info(
        "faces", TensorProto.UINT8, ["batch", cfg.frames, cfg.face_size, cfg.face_size, cfg.face_channels]),
        next(i for i in head.graph.input if i.name == "presence")]
    graph = helper.make_graph(nodes, "avtca", inputs, list(head.graph.output), initializers, value_info=infos)
    return helper.make_model(graph, opset_imports=list(frames.opset_import), ir_version=frames.ir_version)


def export_parts(model: AVTCA, directory: Path) -> onnx.ModelProto:
    """The network as one graph of three parts, each exported from PyTorch on its own: the per-frame face encoder,
    the audio front end and the head (`compose`).

    The app runs the parts apart: it encodes each face crop once, when a window first uses it, and per tick
    computes the audio features once and runs the head on the batch of three (fused, voice only, face only).
    Exact: the face CNN sees each frame on its own, and the three rows share one audio window.
    """
    cfg = model.cfg
    audio, faces, presence = example_inputs(model, 3, CHECK_SEED + 3)
    crops = faces.reshape(-1, cfg.face_size, cfg.face_size, cfg.face_channels)
    paths = {part: directory / f"{part}.onnx" for part in PARTS}
    torch_to_onnx(FrameEncoder(inference_form(model)), paths["frames"], (crops[:4],), PARTS["frames"][0],
                  PARTS["frames"][1][0])
    torch_to_onnx(AudioFeatures(model), paths["audio"], (audio[:2],), PARTS["audio"][0], PARTS["audio"][1][0])
    with torch.no_grad():
        emb = model.encode_frames(faces)
        feats = model.audio_frontend(audio)
    torch_to_onnx(Head(model), paths["head"], (feats[:2], emb[:2], presence[:2]), PARTS["head"][0], OUTPUT_NAME)
    return compose(*(onnx.load(str(paths[part])) for part in ("frames", "audio", "head")), cfg)


def export(model: AVTCA, out: Path, *, training: dict | None, evaluation: dict | None = None,
           int8: bool = False) -> dict:
    """Write `model` to one verified ONNX file at `out`; returns the metadata written into it."""
    model = model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = build_metadata(model, training, evaluation, int8)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(export_parts(model, Path(tmp)), str(fp32))
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
        # Whole or not at all: a stopped or failed export leaves a model already at `out` as it was.
        partial = out.with_name(out.name + ".partial")
        try:
            shutil.copyfile(staged, partial)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avtca-export", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint written by avtca-train")
    source.add_argument("--init", choices=sorted(PRESETS), help="export a freshly initialised, UNTRAINED preset")
    parser.add_argument("-o", "--output", type=output_file, required=True, help="the .onnx file to write")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of MatMul/Gemm weights")
    parser.add_argument("--eval-json", type=json_file, help="avtca-eval JSON to record as the model's evaluation")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --init")
    args = parser.parse_args(argv)

    evaluation = args.eval_json
    try:
        if args.init:
            torch.manual_seed(args.seed)
            model, training = AVTCA(preset(args.init)), None
        else:
            model, state = load_checkpoint(args.checkpoint)
            training = state.get("training")
            evaluation = evaluation or state.get("evaluation")
        meta = export(model, args.output, training=training, evaluation=evaluation, int8=args.int8)
    except (FileNotFoundError, ValueError, ExportCheckError) as e:
        print(f"avtca-export: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"avtca-export: stopped; {args.output} was not written (a file there is as it was)", file=sys.stderr)
        return 130
    v = meta["verification"]
    figure = f"argmax agreement {v['agreement']:.1%}" if args.int8 else f"max |diff| {v['max_abs_diff']:.1e}"
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, preset {meta['preset']}, "
          f"{'trained' if meta['trained'] else 'UNTRAINED'}); ONNX Runtime vs PyTorch on {v['inputs']} inputs: {figure}")
    if gap := training_gap(meta):
        print(f"avtca-export: note: {args.checkpoint} {gap}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
