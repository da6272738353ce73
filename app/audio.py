"""Audio windows, the ring buffer the microphone fills, and the voice activity check. Torch-free.

Training and the app cut windows with the same functions, so a window means the same to both.
"""

from __future__ import annotations

import threading

import numpy as np

VAD_RMS_DBFS = -45.0  # a window whose RMS level is below this is silence (no voice input)
# A sound card hands over a block every few tens of milliseconds, and a sound server may hold a few back and send
# them together. Within this slack the ring takes blocks as they come, and a window ending after the newest
# sample ends at the newest sample; beyond it, time without audio is silence (zeros), so the audio of a
# microphone that stopped is neither scored as if it were current nor joined to what it sends when it is back.
DELIVERY_SLACK_SECONDS = 0.25


def centre_window(signal: np.ndarray, length: int) -> np.ndarray:
    """The middle `length` samples of a 1-D signal, zero-padded at the end when it is shorter."""
    if len(signal) >= length:
        start = (len(signal) - length) // 2
        return signal[start:start + length]
    return np.pad(signal, (0, length - len(signal)))


def window_ending_at(signal: np.ndarray, end: int, length: int) -> np.ndarray:
    """The `length` samples of a 1-D signal that end at index `end`, zero-padded at the start where needed."""
    end = min(max(end, 0), len(signal))
    start = end - length
    if start >= 0:
        return signal[start:end]
    return np.concatenate([np.zeros(-start, signal.dtype), signal[:end]])


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    if len(samples) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def voice_active(samples: np.ndarray, threshold_dbfs: float = VAD_RMS_DBFS) -> bool:
    """Energy-based voice activity: is the window louder than the threshold?"""
    return rms_dbfs(samples) > threshold_dbfs


class AudioRing:
    """A bounded history of mono float32 samples with the capture time of its newest sample.

    The audio callback writes; the inference thread reads windows ending at a given time. Memory is fixed:
    older samples are overwritten.
    """

    def __init__(self, sample_rate_hz: int, seconds: float):
        self.sample_rate_hz = sample_rate_hz
        self.capacity = int(round(seconds * sample_rate_hz))
        self._buf = np.zeros(self.capacity, np.float32)
        self._written = 0  # total samples ever written
        self._t_end = None  # capture time of the sample after the newest one (seconds, monotonic)
        self._lock = threading.Lock()

    def write(self, samples: np.ndarray, t_end: float) -> None:
        """Append samples whose last one ends at capture time `t_end`, after silence for the time since the
        newest sample where that is longer than DELIVERY_SLACK_SECONDS."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        with self._lock:
            if self._t_end is not None:
                gap = int(round((t_end - self._t_end) * self.sample_rate_hz)) - len(samples)
                if gap > DELIVERY_SLACK_SECONDS * self.sample_rate_hz:
                    samples = np.concatenate([np.zeros(min(gap, self.capacity), np.float32), samples])
            samples = samples[-self.capacity:]
            n = len(samples)
            pos = self._written % self.capacity
            first = min(n, self.capacity - pos)
            self._buf[pos:pos + first] = samples[:first]
            self._buf[:n - first] = samples[first:]
            self._written += n
            self._t_end = t_end

    @property
    def t_end(self) -> float | None:
        return self._t_end

    def window(self, t_end: float, length: int) -> np.ndarray:
        """The `length` samples ending at capture time `t_end`: zeros where the history does not reach, and
        after the newest sample when `t_end` is more than DELIVERY_SLACK_SECONDS later than it."""
        with self._lock:
            if self._t_end is None:
                return np.zeros(length, np.float32)
            lag = int(round((self._t_end - t_end) * self.sample_rate_hz))  # < 0: t_end is after the newest sample
            if 0 > lag >= -DELIVERY_SLACK_SECONDS * self.sample_rate_hz:
                lag = 0
            end = self._written - lag
            start = end - length
            out = np.zeros(length, np.float32)
            lo, hi = max(start, self._written - self.capacity, 0), min(end, self._written)
            if hi > lo:
                out[lo - start:hi - start] = self._buf[np.arange(lo, hi) % self.capacity]
            return out


def frame_times(t_end: float, window_seconds: float, frames: int) -> list[float]:
    """Times of the `frames` face crops that go with the audio window ending at `t_end`: evenly spread,
    each at the centre of its share of the window."""
    step = window_seconds / frames
    return [t_end - window_seconds + (i + 0.5) * step for i in range(frames)]
