"""Open an exported avtca ONNX model and check that it describes itself truthfully. Torch-free."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .cli import not_a_file

METADATA_KEY = "avtca"  # metadata_props key whose value is the model's JSON description
METADATA_FORMAT = "avtca-onnx/1"
INPUT_NAMES = ("audio", "faces", "presence")
OUTPUT_NAME = "probabilities"
REQUIRED_KEYS = ("format", "preset", "labels", "sample_rate_hz", "window_seconds", "window_samples", "frames",
                 "face_size", "face_channels", "config", "trained", "weights_sha256")


class ModelFileError(Exception):
    """A model file that is missing, unreadable, or does not match its own description."""


@dataclass(frozen=True)
class ModelInfo:
    """What the app needs to feed a model, read from the model file itself."""

    path: Path
    preset: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    window_seconds: float
    window_samples: int
    frames: int
    face_size: int
    face_channels: int
    trained: bool
    metadata: dict

    @classmethod
    def from_metadata(cls, path: Path, meta: dict) -> "ModelInfo":
        return cls(path=path, preset=meta["preset"], labels=tuple(meta["labels"]),
                   sample_rate_hz=int(meta["sample_rate_hz"]), window_seconds=float(meta["window_seconds"]),
                   window_samples=int(meta["window_samples"]), frames=int(meta["frames"]),
                   face_size=int(meta["face_size"]), face_channels=int(meta["face_channels"]),
                   trained=bool(meta["trained"]), metadata=meta)


def training_gap(meta: dict) -> str | None:
    """A sentence for a trained model whose training stopped before the stage that trains the layers behind its
    fused output (fusion, or av), naming which of its outputs mean something; None otherwise (an untrained model
    is said to be untrained elsewhere)."""
    stages = [s.get("stage") for s in (meta.get("training") or {}).get("stages", [])]
    if not meta.get("trained") or not stages or {"fusion", "av"} & set(stages):
        return None
    trained = ("its voice-only probabilities are trained, its fused and face-only ones are not" if "voice" in stages
               else "none of its probabilities is (the face stage trains the face CNN under a head of its own)")
    return (f"was trained through the {' and '.join(stages)} stage{'s' if len(stages) > 1 else ''} only, without the "
            f"fusion stage: {trained}")


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for --device cpu|cuda."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def _parse_metadata(path: Path, custom: dict[str, str]) -> dict:
    if METADATA_KEY not in custom:
        raise ModelFileError(f"model file {path} carries no avtca metadata; export it with avtca-export")
    try:
        meta = json.loads(custom[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ModelFileError(f"model file {path} has malformed avtca metadata ({e}); re-export it with avtca-export") from e
    missing = [k for k in REQUIRED_KEYS if k not in meta] if isinstance(meta, dict) else list(REQUIRED_KEYS)
    if missing:
        raise ModelFileError(f"model file {path} metadata lacks {', '.join(missing)}; re-export it with avtca-export")
    if meta["format"] != METADATA_FORMAT:
        raise ModelFileError(f"model file {path} has metadata format {meta['format']!r}, this app reads "
                             f"{METADATA_FORMAT!r}; re-export it with this version's avtca-export")
    return meta


def _check_io(path: Path, session, info: ModelInfo) -> None:
    """The graph's inputs and output must have the shapes and types the metadata promises."""
    inputs = {i.name: i for i in session.get_inputs()}
    if tuple(sorted(inputs)) != tuple(sorted(INPUT_NAMES)):
        raise ModelFileError(f"model file {path} has inputs {sorted(inputs)}, expected {list(INPUT_NAMES)}")
    expected = {
        "audio": ("tensor(float)", [info.window_samples]),
        "faces": ("tensor(uint8)", [info.frames, info.face_size, info.face_size, info.face_channels]),
        "presence": ("tensor(float)", [2]),
    }
    for name, (dtype, dims) in expected.items():
        got = inputs[name]
        if got.type != dtype or list(got.shape[1:]) != dims:
            raise ModelFileError(f"model file {path} input {name!r} is {got.type} {got.shape}, but its metadata "
                                 f"says {dtype} [batch, {', '.join(map(str, dims))}]; re-export it with avtca-export")
    outputs = session.get_outputs()
    if len(outputs) != 1 or outputs[0].shape[-1] != len(info.labels):
        shapes = [o.shape for o in outputs]
        raise ModelFileError(f"model file {path} outputs {shapes}, but its metadata names {len(info.labels)} labels")


def session_options(threads: int = 0):
    """ONNX Runtime session options for the app: `threads` intra-op threads (0: ONNX Runtime's default), errors
    only in the log."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return options


def open_model(path: str | Path, providers: list[str] | None = None, threads: int = 0):
    """(onnxruntime.InferenceSession, ModelInfo) for a validated avtca model; ModelFileError otherwise."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} {not_a_file(path)}; pass --model PATH or export one with "
                             f"avtca-export")
    try:
        session = ort.InferenceSession(str(path), session_options(threads),
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"model file {path} is not a readable ONNX model (truncated or corrupt?): {reason}; "
                             f"re-export it with avtca-export") from e
    meta = _parse_metadata(path, session.get_modelmeta().custom_metadata_map)
    info = ModelInfo.from_metadata(path, meta)
    _check_io(path, session, info)
    return session, info


def read_model_info(path: str | Path) -> ModelInfo:
    """The validated description of a model file, without keeping a session."""
    return open_model(path)[1]


# The full model is made of three parts, and each part's edges are named tensors of its graph: the per-frame
# face encoder, the audio front end, and the head that takes both front ends' outputs. (inputs, outputs) by name.
PARTS = {
    "frames": (("crops",), ("embeddings",)),
    "audio": (("audio",), ("audio_features",)),
    "head": (("audio_features", "frame_embeddings", "presence"), (OUTPUT_NAME,)),
}


def open_parts(path: str | Path, info: ModelInfo, providers: list[str] | None = None, threads: int = 0):
    """(frame encoder session, audio features session, head session) cut out of the model file at `path`, or
    (None, reason) for a file that does not name its parts (then the app runs the full model on each tick).

    The parts are the full model's own nodes and weights between the tensors its metadata names (`PARTS`), so
    running them in turn computes exactly what the full model computes.
    """
    import onnx
    import onnx.utils
    import onnxruntime as ort

    named = info.metadata.get("parts")
    if named is None:
        return None, f"{Path(path).name} does not name its parts (exported before they were recorded)"
    try:
        edges = {part: (tuple(edge["inputs"]), tuple(edge["outputs"])) for part, edge in named.items()}
    except (AttributeError, KeyError, TypeError):
        edges = None
    if edges != PARTS:
        return None, (f"{Path(path).name} names other parts or edges than this app cuts; re-export it with this "
                      f"version's avtca-export")
    try:
        extractor = onnx.utils.Extractor(onnx.load(str(path)))
        sessions = []
        for inputs, outputs in PARTS.values():
            graph = extractor.extract_model(list(inputs), list(outputs))
            sessions.append(ort.InferenceSession(graph.SerializeToString(), session_options(threads),
                                                 providers=providers or ["CPUExecutionProvider"]))
    except Exception as e:  # a graph whose named edges do not cut it into parts: the full model still works
        return None, f"its parts could not be cut out of {Path(path).name} ({type(e).__name__}: {e})"
    return tuple(sessions), None
