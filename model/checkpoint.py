"""Checkpoints carry the config, label set, weights, optimizer state and how the weights were made."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
from pathlib import Path

import torch

from ..app.cli import not_a_file
from .config import AVTCAConfig
from .network import AVTCA


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict: each tensor's name, then its float32 little-endian bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def git_commit(repo_dir: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with '+dirty' if it has changes), or None outside a git checkout."""
    cwd = repo_dir or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def provenance(datasets: list[str], label_mapping: dict, argv: list[str] | None = None) -> dict:
    """How a set of weights was made: data, label mapping, exact command, commit and date."""
    return {
        "datasets": datasets,
        "label_mapping": label_mapping,
        "command": " ".join(argv if argv is not None else sys.argv),
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }


def save_checkpoint(path: Path, model: AVTCA, *, training: dict | None, evaluation: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> None:
    """Write a checkpoint that rebuilds its model with no outside knowledge."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": model.cfg.to_dict(),
        "model": model.state_dict(),
        "training": training,
        "evaluation": evaluation,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[AVTCA, dict]:
    """(model in eval mode, the raw checkpoint dict); a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} {not_a_file(path)}; train one with avtca-train or pass another "
                                f"path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {path} could not be read ({e}); it is damaged or not a torch file") from e
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"checkpoint {path} holds no avtca config and weights; was it written by avtca-train?")
    model = AVTCA(AVTCAConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state
