"""Shared fixtures: the real data in ../shared/data and a small exported model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# LiteRT's warning (two absl lines) that an input was not aligned: it comes on whichever face detection meets
# unaligned memory, so the app cannot hold it back the way it holds back the detector's start-up notes.
LITERT_ALIGNMENT = re.compile(r"^WARNING: Logging before InitGoogle|inference_runner_litert.*not aligned")
SHARED_DATA = Path(os.environ.get("AVTCA_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped with the reason if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is not on this machine (set AVTCA_SHARED_DATA to its folder)")
    return path


def ctrl_c_once(command: list[str], ready: Callable[[], bool], env: dict | None = None) -> tuple[int, str]:
    """Run `command`, press Ctrl-C (SIGINT) as soon as `ready()` is true, and return its exit code and stderr."""
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert run.poll() is None and time.monotonic() < deadline, f"{command} ended or hung before Ctrl-C"
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    return run.returncode, stderr


@pytest.fixture(scope="session")
def live_onnx(tmp_path_factory) -> Path:
    """The live preset, freshly initialised (seed 0) and exported once per test session."""
    torch = pytest.importorskip("torch")
    from avtca.model.config import preset
    from avtca.model.export import export
    from avtca.model.network import AVTCA

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export") / "live.onnx"
    export(AVTCA(preset("live")), out, training=None)
    return out
