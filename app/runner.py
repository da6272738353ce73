"""Drives an Engine from a Source at a fixed tick rate, off the GUI thread; collects run statistics.

Real time: the worker takes the newest frame (older ones were dropped at the source), detects faces, and
scores a tick every 1 / TICK_HZ seconds of the source clock. Fast (files only): every frame is processed in
media-time order and ticks fall on media time, so a file gives the same ticks however fast the machine is.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .capture import DeviceError, FileSource, Source
from .media import MediaError
from .pipeline import TICK_HZ, Engine, Result


class RunStats:
    """Ticks, frames, and per-stage latency samples of one run."""

    def __init__(self):
        self.ticks = 0
        self.latency: dict[str, list[float]] = {}
        self.cpu_start = time.process_time()
        self.wall_start = time.monotonic()

    def add(self, result: Result) -> None:
        self.ticks += 1
        for k, v in result.latency_ms.items():
            self.latency.setdefault(k, []).append(v)

    def summary(self, frames_processed: int, frames_dropped: int, media_seconds: float | None) -> dict:
        wall = time.monotonic() - self.wall_start
        cpu = time.process_time() - self.cpu_start
        out = {"ticks": self.ticks, "frames_processed": frames_processed, "frames_dropped": frames_dropped,
               "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
               "latency_ms": {k: {"median": round(float(np.median(v)), 2), "p95": round(float(np.percentile(v, 95)), 2)}
                              for k, v in self.latency.items() if v}}
        if media_seconds:
            out["media_seconds"] = round(media_seconds, 3)
            out["cpu_seconds_per_media_second"] = round(cpu / media_seconds, 3)
            out["frames_per_wall_second"] = round(frames_processed / wall, 1) if wall > 0 else None
        return out


class JsonlWriter:
    """One JSON object per tick, flushed as it goes (a crash loses at most the line being written)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.path.open("w")
        except OSError as e:
            raise MediaError(f"cannot write predictions to {path} ({e.strerror or e}); choose a file in a folder you "
                             f"can write to") from None
        self._lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.write(json.dumps(result.record()) + "\n")
                self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


class Runner:
    """The worker: owns the loop that feeds `engine` from `source` and hands results to `on_result`."""

    def __init__(self, source: Source, engine: Engine, on_result: Callable[[Result], None],
                 tick_hz: float = TICK_HZ, on_frame: Callable | None = None):
        self.source, self.engine, self.on_result = source, engine, on_result
        self.on_frame = on_frame
        self.dt = 1.0 / tick_hz
        self.stats = RunStats()
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self.media_reached = 0.0  # how far into a file the run got, in media seconds

    def _emit(self, t: float) -> None:
        result = self.engine.tick(t, self.source.audio, self.source.clock if self.source.realtime else None)
        self.stats.add(result)
        self.on_result(result)

    def run_fast(self) -> None:
        assert isinstance(self.source, FileSource)
        next_tick = self.dt
        for t, frame in self.source.events():
            if self.stop_event.is_set():
                return
            self.media_reached = t
            self.source.feed_audio_until(t)
            if frame is not None:
                seen = self.engine.process_frame(frame)
                if self.on_frame:
                    self.on_frame(frame, seen)
            while next_tick <= t + 1e-9:
                self._emit(next_tick)
                next_tick += self.dt

    def run_realtime(self) -> None:
        self.source.start()
        start = self.source.clock()
        next_tick = start + self.dt
        while not self.stop_event.is_set():
            now = self.source.clock()
            frame = self.source.frames.take(timeout=max(0.0, min(next_tick - now, 0.05)))
            if frame is not None:
                seen = self.engine.process_frame(frame)
                if self.on_frame:
                    self.on_frame(frame, seen)
            now = self.source.clock()
            if now >= next_tick:
                self._emit(next_tick)
                next_tick += self.dt
                if now - next_tick > 1.0:  # fell far behind (machine suspended?): skip, do not queue
                    next_tick = now + self.dt
            self.media_reached = now - start
            if self.source.exhausted():
                end = getattr(self.source, "duration", None)
                while end is not None and next_tick <= end + 1e-9 and not self.stop_event.is_set():
                    self._emit(next_tick)
                    next_tick += self.dt
                if end is not None:
                    self.media_reached = end
                return

    def run(self) -> None:
        try:
            if isinstance(self.source, FileSource) and not self.source.realtime:
                self.run_fast()
            else:
                self.run_realtime()
        except (MediaError, DeviceError) as e:  # a file that breaks off mid-way, a device that vanished
            self.error = str(e)
        finally:
            self.done.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="avtca-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker and the source to stop, wait for both, release the devices."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.source.stop()

    def summary(self) -> dict:
        dropped = self.source.frames.dropped
        duration = getattr(self.source, "duration", None)  # a file; devices have none
        played = min(self.media_reached, duration) if duration else None  # --seconds may stop a file early
        out = self.stats.summary(self.engine.frames_processed, dropped, played)
        if self.engine.frames_session is not None:  # the split model: crops run through the face CNN
            out["crops_encoded"] = self.engine.crops_encoded
        return out
