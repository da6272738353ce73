"""The PySide6 window: video with face boxes, fused/voice/face bars, a rolling plot, status, pickers, recording.

The worker thread (Runner) produces; this thread paints. Results arrive through a Qt signal; the newest
video frame is kept in a one-slot holder and painted by a display timer, so nothing queues up.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

# The OpenCV wheel points Qt at its own Qt5 plugins; PySide6 must use its own.
for _var in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR"):
    os.environ.pop(_var, None)

from PySide6.QtCore import QObject, Qt, QTimer, Signal  # noqa: E402
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QPixmap  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication, QComboBox, QFileDialog, QGridLayout, QHBoxLayout, QLabel, QMainWindow, QProgressBar,
    QPushButton, QVBoxLayout, QWidget,
)

from .capture import camera_names, list_microphones, DeviceError  # noqa: E402
from .media import MediaError  # noqa: E402
from .pipeline import Result  # noqa: E402
from .runner import JsonlWriter, Runner  # noqa: E402

PLOT_SECONDS = 20.0
DISPLAY_HZ = 30
COLOURS = ["#7f7f7f", "#2ca02c", "#1f77b4", "#d62728", "#9467bd", "#8c564b", "#ff7f0e", "#17becf"]


class Bridge(QObject):
    """Carries results from the worker thread to the GUI thread."""

    result = Signal(object)


class BarGroup(QWidget):
    """One column of probability bars, one per label."""

    def __init__(self, title: str, labels: tuple[str, ...]):
        super().__init__()
        layout = QGridLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setVerticalSpacing(1)
        self.title = QLabel(f"<b>{title}</b>")
        layout.addWidget(self.title, 0, 0, 1, 2)
        self.bars = {}
        for i, label in enumerate(labels, start=1):
            layout.addWidget(QLabel(label), i, 0)
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setFormat("%p%")
            bar.setFixedWidth(150)
            layout.addWidget(bar, i, 1)
            self.bars[label] = bar
        self.base_title = title

    def show_probs(self, probs: dict[str, float] | None, missing: str) -> None:
        self.title.setText(f"<b>{self.base_title}</b>" + ("" if probs else f" <i>({missing})</i>"))
        for label, bar in self.bars.items():
            bar.setValue(int(round(1000 * probs[label])) if probs else 0)


class MainWindow(QMainWindow):
    def __init__(self, runner: Runner, labels: tuple[str, ...], provider: str, restart=None):
        super().__init__()
        self.setWindowTitle("avtca: emotion from face and voice")
        self.runner, self.labels, self.provider = runner, labels, provider
        self.restart = restart  # callable(camera=None, mic=None) -> (runner, provider), for the pickers
        self.bridge = Bridge()
        self.bridge.result.connect(self.on_result)
        self._latest_frame = None
        self._frame_lock = threading.Lock()
        self._last_result: Result | None = None
        self.results_shown = 0
        self._paint_times: deque[float] = deque(maxlen=60)
        self.history: deque[tuple[float, dict | None]] = deque()
        self.recorder: JsonlWriter | None = None
        self.record_error: str | None = None
        self._build_ui()
        self._attach(runner)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.paint_frame)
        self.timer.start(int(1000 / DISPLAY_HZ))

    # -- layout --------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        import pyqtgraph as pg

        central = QWidget()
        root = QVBoxLayout(central)
        controls = QHBoxLayout()
        self.camera_box = QComboBox()
        self.camera_box.addItem("camera: (current source)", None)
        for index, name in camera_names().items():
            self.camera_box.addItem(f"camera {index}: {name}", index)
        self.camera_box.activated.connect(self.on_camera_picked)
        self.mic_box = QComboBox()
        self.mic_box.addItem("microphone: (default)", None)
        try:
            for index, name, _ in list_microphones():
                self.mic_box.addItem(f"mic {index}: {name}", index)
        except DeviceError as e:
            self.mic_box.addItem(f"no microphones ({str(e)[:60]})", None)
        self.mic_box.activated.connect(self.on_mic_picked)
        self.record_button = QPushButton("Start recording")
        self.record_button.clicked.connect(self.toggle_recording)
        for w in (self.camera_box, self.mic_box, self.record_button):
            controls.addWidget(w)
        root.addLayout(controls)

        middle = QHBoxLayout()
        self.video = QLabel("waiting for video ...")
        self.video.setAlignment(Qt.AlignCenter)
        self.video.setMinimumSize(480, 360)
        self.video.setStyleSheet("background: #202020; color: #c0c0c0;")
        middle.addWidget(self.video, stretch=3)
        bars = QVBoxLayout()
        self.groups = {"fused": BarGroup("fused", self.labels), "voice": BarGroup("voice", self.labels),
                       "face": BarGroup("face", self.labels)}
        for g in self.groups.values():
            bars.addWidget(g)
        middle.addLayout(bars, stretch=1)
        root.addLayout(middle)

        self.plot = pg.PlotWidget()
        self.plot.setBackground("w")
        self.plot.setYRange(0, 1)
        self.plot.setLabel("bottom", "seconds ago")
        self.plot.setLabel("left", "fused probability")
        self.plot.addLegend(offset=(5, 5), colCount=4)  # two rows: seven labels in one column outgrow the plot
        self.plot.setMinimumHeight(170)
        self.plot.setMaximumHeight(220)
        self.curves = {label: self.plot.plot(pen=pg.mkPen(COLOURS[i % len(COLOURS)], width=2), name=label)
                       for i, label in enumerate(self.labels)}
        root.addWidget(self.plot)
        self.status = QLabel("starting ...")
        root.addWidget(self.status)
        self.setCentralWidget(central)

    def _attach(self, runner: Runner) -> None:
        self.runner = runner
        runner.on_result = self._from_worker
        runner.on_frame = self._frame_from_worker

    # -- worker side (any thread) ---------------------------------------------------------------------
    def _from_worker(self, result: Result) -> None:
        if self.recorder is not None:
            self.recorder(result)
        self.bridge.result.emit(result)

    def _frame_from_worker(self, frame, seen) -> None:
        with self._frame_lock:
            self._latest_frame = (frame.rgb, seen.faces)

    # -- GUI thread ----------------------------------------------------------------------------------------
    def on_result(self, result: Result) -> None:
        self._last_result = result
        self.results_shown += 1
        self.groups["fused"].show_probs(result.fused, "no face, no voice")
        self.groups["voice"].show_probs(result.voice, "silence")
        self.groups["face"].show_probs(result.face, "no face")
        self.history.append((result.t, result.fused))
        while self.history and self.history[0][0] < result.t - PLOT_SECONDS:
            self.history.popleft()
        ts = np.array([t - result.t for t, _ in self.history])
        for label, curve in self.curves.items():
            curve.setData(ts, np.array([p[label] if p else np.nan for _, p in self.history]), connect="finite")
        self.update_status()

    def update_status(self) -> None:
        r = self._last_result
        fps = 0.0
        if len(self._paint_times) > 1:
            fps = (len(self._paint_times) - 1) / max(self._paint_times[-1] - self._paint_times[0], 1e-6)
        parts = [f"display {fps:.0f} fps"]
        if r is not None:
            lat = r.latency_ms
            parts += [f"inference {lat.get('inference', 0):.1f} ms",
                      f"capture-to-result {lat.get('capture_to_result', float('nan')):.0f} ms",
                      f"mic {r.level_dbfs:.0f} dBFS" if np.isfinite(r.level_dbfs) else "mic silent"]
        parts.append(self.provider)
        fault = self.runner.source.fault() or self.runner.error
        if fault:
            parts.append(f"<span style='color:#c00'>{fault}</span>")
        if self.recorder is not None:
            parts.append(f"recording to {self.recorder.path}")
        if self.record_error:
            parts.append(f"<span style='color:#c00'>{self.record_error}</span>")
        self.status.setText(" | ".join(parts))

    def paint_frame(self) -> None:
        with self._frame_lock:
            latest, self._latest_frame = self._latest_frame, None
        if latest is None:
            return
        rgb, faces = latest
        h, w = rgb.shape[:2]
        image = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()
        painter = QPainter(image)
        top = self._last_result.top if self._last_result is not None else None
        for i, f in enumerate(faces):
            painter.setPen(QPen(QColor("#00e000" if i == 0 else "#e0e000"), max(2, w // 320)))
            painter.drawRect(f.x, f.y, f.w, f.h)
            if i == 0 and top:
                font = painter.font()
                font.setPointSize(max(10, w // 40))
                painter.setFont(font)
                painter.drawText(f.x, max(f.y - 8, 20), top)
        painter.end()
        self.video.setPixmap(QPixmap.fromImage(image).scaled(self.video.size(), Qt.KeepAspectRatio,
                                                             Qt.SmoothTransformation))
        self._paint_times.append(time.monotonic())

    def toggle_recording(self) -> None:
        if self.recorder is None:
            path, _ = QFileDialog.getSaveFileName(self, "Record predictions", "avtca-recording.jsonl",
                                                  "JSON lines (*.jsonl)")
            if path:
                self.start_recording(Path(path))
        else:
            self.stop_recording()

    def start_recording(self, path: Path) -> None:
        try:
            self.recorder = JsonlWriter(path)
        except MediaError as e:  # the dialog let the user pick a place that cannot be written
            self.record_error = str(e)  # shown in the status line until the next recording starts
            self.update_status()
            return
        self.record_error = None
        self.record_button.setText("Stop recording")

    def stop_recording(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        self.record_button.setText("Start recording")

    def _switch(self, **change) -> None:
        if self.restart is None:
            return
        self.runner.stop()
        self.runner.engine.detector.close()
        try:
            runner, self.provider = self.restart(**change)
        except DeviceError as e:
            self.status.setText(f"<span style='color:#c00'>{e}</span>")
            return
        self._attach(runner)
        runner.start()

    def on_camera_picked(self, _index: int) -> None:
        camera = self.camera_box.currentData()
        if camera is not None:
            self._switch(camera=str(camera))

    def on_mic_picked(self, _index: int) -> None:
        mic = self.mic_box.currentData()
        if mic is not None:
            self._switch(mic=str(mic))

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.timer.stop()
        self.runner.stop()
        self.stop_recording()
        self.runner.engine.detector.close()
        super().closeEvent(event)


def run_window(args, build) -> int:
    """Open the window on the pipeline `build(args)` makes; returns when it is closed."""
    app = QApplication.instance() or QApplication([])
    runner, info, provider = build(args)

    def restart(camera=None, mic=None):
        if camera is not None:
            args.camera, args.source = camera, None
        if mic is not None:
            args.mic = mic
        new_runner, _, new_provider = build(args)
        return new_runner, new_provider

    window = MainWindow(runner, info.labels, provider, restart)
    window.resize(1100, 760)
    window.show()
    runner.start()
    if args.out:  # --out records from the start, as the headless app writes there
        window.start_recording(args.out)
    interrupted = threading.Event()

    def close_on_ctrl_c(*_) -> None:  # Ctrl-C in the terminal closes the window as its close button does
        interrupted.set()
        window.close()

    previous = signal.signal(signal.SIGINT, close_on_ctrl_c)
    wake = QTimer()  # Qt's event loop runs no Python while idle: this lets the handler run within 0.2 s
    wake.timeout.connect(lambda: None)
    wake.start(200)
    try:
        code = app.exec()
    finally:
        wake.stop()
        signal.signal(signal.SIGINT, previous)
    return 130 if interrupted.is_set() else code
