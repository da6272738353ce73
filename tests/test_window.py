"""The window opens, updates from a file source, records, and closes cleanly (Qt offscreen)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")

from PySide6.QtCore import QEventLoop  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from avtca.app.live import build, parser  # noqa: E402
from avtca.app.window import MainWindow  # noqa: E402

from conftest import REPO, ctrl_c_once, shared  # noqa: E402

ARTEFACTS = REPO / "tests" / "artefacts"


def pump(app: QApplication, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents(QEventLoop.AllEvents, 50)
        time.sleep(0.01)


def test_window_updates_records_and_closes(tmp_path: Path):
    app = QApplication.instance() or QApplication([])
    clip = shared("unlabelled_video", "single_face.mp4")
    args = parser().parse_args(["--source", str(clip)])
    runner, info, provider = build(args)
    window = MainWindow(runner, info.labels, provider)
    window.resize(1100, 760)
    window.show()
    runner.start()
    window.start_recording(tmp_path / "rec.jsonl")
    pump(app, 3.0)
    assert window.results_shown >= 10  # 10 Hz ticks reached the GUI thread
    assert window.video.pixmap() is not None and not window.video.pixmap().isNull()
    assert "CPUExecutionProvider" in window.status.text() and "inference" in window.status.text()
    assert window.groups["face"].bars["happy"].value() > 0  # the face was found and scored
    # Every label of the plot's legend is inside the plot's area, none hidden behind its axis.
    visible = window.plot.getPlotItem().vb.sceneBoundingRect()
    legend = window.plot.getPlotItem().legend
    assert [label.text for _, label in legend.items] == list(info.labels)
    assert all(visible.contains(label.sceneBoundingRect()) for _, label in legend.items)
    ARTEFACTS.mkdir(exist_ok=True)
    assert window.grab().save(str(ARTEFACTS / "window.png"))
    window.stop_recording()
    recorded = [json.loads(x) for x in (tmp_path / "rec.jsonl").read_text().splitlines()]
    assert len(recorded) >= 10 and {"t", "fused", "voice", "face", "top", "latency_ms"} <= set(recorded[0])
    # A place that cannot be written: the status line says so, and the window goes on.
    (tmp_path / "file").write_text("")
    window.start_recording(tmp_path / "file" / "rec.jsonl")
    pump(app, 0.5)
    assert window.recorder is None and window.record_button.text() == "Start recording"
    assert f"cannot write predictions to {tmp_path / 'file' / 'rec.jsonl'}" in window.status.text()
    assert runner.error is None
    window.close()
    assert runner.done.is_set() and runner.source.finished.is_set()  # worker and source stopped


def test_window_records_from_the_start_and_closes_on_ctrl_c(tmp_path: Path):
    """avtca-live with a window: --out records from the start, and Ctrl-C in the terminal closes the window as its
    close button does (exit code 130, no traceback, every recorded line whole)."""
    out = tmp_path / "rec.jsonl"

    def recorded() -> list[str]:
        return out.read_text().splitlines() if out.is_file() else []

    clip = shared("unlabelled_video", "WolfgangLanger_Pexels.mp4")  # 20 s: still playing when Ctrl-C comes
    command = [sys.executable, "-m", "avtca.app.live", "--source", str(clip), "--out", str(out)]
    returncode, stderr = ctrl_c_once(command, lambda: len(recorded()) >= 5,
                                     env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = [json.loads(line) for line in recorded()]
    assert len(lines) >= 5 and all({"t", "fused", "face"} <= set(r) for r in lines)
