"""The live pipeline: faces per frame, audio and face crops aligned by time, batched inference, smoothing.

`Engine` is the same for every source and for the window and headless modes:
  process_frame(frame)  detect faces, crop the largest, remember it with its capture time
  tick(t)               the audio window ending at t and the T crops spread over that same window, scored
                        fused, voice-only and face-only in one batched ONNX Runtime call

The T crops of a window are the frames nearest `clip_times`, on a fixed grid no finer than a tick, so once a
run is a window old, a tick uses at most one crop that no earlier tick used. With the model's parts a crop is
encoded the first time a tick uses it: 8 crops a second for the live preset, whatever the camera's frame rate.
Torch-free.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .audio import AudioRing, frame_times, rms_dbfs, voice_active
from .capture import Frame
from .faces import Face, FaceDetector, crop_face
from .modelfile import ModelInfo

TICK_HZ = 10.0  # inference rate
FACE_GONE_SECONDS = 0.5  # a face not seen for this long is gone: its old crops are not reused


@dataclass
class SeenFrame:
    t: float
    faces: list[Face]
    crop: np.ndarray | None  # the largest face, cropped for the model
    embedding: np.ndarray | None = None  # its per-frame CNN embedding, once a tick has used this crop


@dataclass
class Result:
    """One tick's output; `record()` is the JSON line."""

    t: float
    face_present: bool
    voice_active: bool
    fused: dict[str, float] | None
    voice: dict[str, float] | None
    face: dict[str, float] | None
    top: str | None
    faces: list[Face]
    level_dbfs: float
    latency_ms: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        rnd = lambda d: None if d is None else {k: round(v, 4) for k, v in d.items()}  # noqa: E731
        return {"t": round(self.t, 4), "face_present": self.face_present, "voice_active": self.voice_active,
                "fused": rnd(self.fused), "voice": rnd(self.voice), "face": rnd(self.face), "top": self.top,
                "faces": [[f.x, f.y, f.w, f.h] for f in self.faces],
                "level_dbfs": None if math.isinf(self.level_dbfs) else round(self.level_dbfs, 1),
                "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()}}


class Smoother:
    """Exponential smoothing with a time constant in seconds (0: off); resets when its input goes missing."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._state: np.ndarray | None = None
        self._t: float | None = None

    def __call__(self, t: float, p: np.ndarray | None) -> np.ndarray | None:
        if p is None or self.seconds <= 0:
            self._state, self._t = (None, None) if p is None else (p, t)
            return p
        if self._state is None:
            self._state = p
        else:
            alpha = 1.0 - math.exp(-max(t - self._t, 0.0) / self.seconds)
            self._state = self._state + alpha * (p - self._state)
        self._t = t
        return self._state


def clip_times(t_end: float, window_seconds: float, frames: int, tick_seconds: float = 1.0 / TICK_HZ) -> list[float]:
    """The times of the `frames` crops for the window ending at `t_end`: those of `frame_times`, moved together
    by at most half a grid step onto a fixed grid that divides their spacing and is no finer than a tick.

    So once a run is a window old, a tick adds at most one time that no earlier tick used: a run needs a few
    crops a second (8 for 8 frames in 3 s), not every frame, and each is encoded once.
    """
    step = window_seconds / frames
    per_step = max(1, int(step / tick_seconds + 1e-9))
    grid = step / per_step
    first = round(frame_times(t_end, window_seconds, frames)[0] / grid)
    return [(first + i * per_step) * grid for i in range(frames)]


def resample_linear(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a 1-D signal by linear interpolation, after a box low-pass when shrinking."""
    if rate_in == rate_out:
        return x
    ratio = rate_in / rate_out
    if ratio > 1:
        k = int(math.ceil(ratio))
        x = np.convolve(x, np.full(k, 1.0 / k, np.float32), mode="same").astype(np.float32)
    n_out = int(round(len(x) / ratio))
    return np.interp(np.arange(n_out) * ratio, np.arange(len(x)), x).astype(np.float32)


class Engine:
    """Turns frames and audio into results; owns the face detector and the ONNX Runtime session."""

    def __init__(self, session, info: ModelInfo, detector: FaceDetector, smooth_seconds: float = 0.5,
                 parts: tuple | None = None):
        self.session, self.info, self.detector = session, info, detector
        # With the model's parts (`open_parts`), a crop is encoded once, when a tick first uses it; a tick computes
        # the audio features once and runs only the head on the batch of three.
        self.frames_session, self.audio_session, self.head_session = parts if parts else (None, None, None)
        self.labels = info.labels
        self.history: deque[SeenFrame] = deque()
        self.history_seconds = info.window_seconds + 1.0
        self.smoothers = {k: Smoother(smooth_seconds) for k in ("fused", "voice", "face")}
        self.stage_ms = self._zero_stages()
        self.frames_processed = 0
        self.crops_encoded = 0
        self._newest_capture_wall: float | None = None
        size, ch, t = info.face_size, info.face_channels, info.frames
        self._blank_faces = np.zeros((t, size, size, ch), np.uint8)
        if self.frames_session is not None:
            embed = self.frames_session.get_outputs()[0].shape[-1]
            self._blank_faces = np.zeros((t, embed), np.float32)

    def _zero_stages(self) -> dict[str, float]:
        stages = {"decode": 0.0, "detect": 0.0, "crop": 0.0}
        if self.frames_session is not None:
            stages["encode"] = 0.0
        return stages

    # -- per frame -------------------------------------------------------------------------------------
    def process_frame(self, frame: Frame) -> SeenFrame:
        """Detect every face, crop the largest; remembered for the ticks whose window covers it."""
        t0 = time.perf_counter()
        faces = self.detector.detect(frame.rgb, frame.t)
        t1 = time.perf_counter()
        crop = crop_face(frame.rgb, faces[0], self.info.face_size, self.info.face_channels) if faces else None
        t2 = time.perf_counter()
        self.stage_ms["decode"] += frame.decode_ms
        self.stage_ms["detect"] += (t1 - t0) * 1000
        self.stage_ms["crop"] += (t2 - t1) * 1000
        seen = SeenFrame(frame.t, faces, crop)
        self.history.append(seen)
        while self.history and self.history[0].t < frame.t - self.history_seconds:
            self.history.popleft()
        self.frames_processed += 1
        self._newest_capture_wall = frame.wall
        return seen

    def _embedding(self, seen: SeenFrame) -> np.ndarray:
        if seen.embedding is None:
            t0 = time.perf_counter()
            seen.embedding = self.frames_session.run(None, {"crops": seen.crop[None]})[0][0]
            self.stage_ms["encode"] += (time.perf_counter() - t0) * 1000
            self.crops_encoded += 1
        return seen.embedding

    def face_clip(self, t: float) -> tuple[np.ndarray, bool, list[Face]]:
        """(T crops (or their embeddings) over the window ending at t, face present, boxes of the newest frame
        at or before t)."""
        frames = [f for f in self.history if f.t <= t + 1e-6]
        if not frames:
            return self._blank_faces, False, []
        newest = frames[-1]
        with_face = [f for f in frames if f.crop is not None]
        present = bool(with_face) and t - with_face[-1].t <= FACE_GONE_SECONDS and newest.crop is not None
        if not present:
            return self._blank_faces, False, newest.faces
        clip = []
        for ft in clip_times(t, self.info.window_seconds, self.info.frames):
            nearest = min(with_face, key=lambda f: abs(f.t - ft))
            clip.append(nearest.crop if self.frames_session is None else self._embedding(nearest))
        return np.stack(clip), True, newest.faces

    # -- per tick --------------------------------------------------------------------------------------
    def tick(self, t: float, audio: AudioRing | None, clock=None) -> Result:
        """Score the window ending at capture time t.

        With a real-time source's `clock`, latency_ms gets capture_to_result (from the capture of the newest
        input, the audio at t, to the result) and frame_age (how old the newest face frame is at the result).
        """
        faces, face_present, boxes = self.face_clip(t)  # encodes the crops no tick has used yet
        stage_ms, self.stage_ms = self.stage_ms, self._zero_stages()
        pcm = np.zeros(self.info.window_samples, np.float32)
        if audio is not None and audio.t_end is not None:
            native = int(round(self.info.window_seconds * audio.sample_rate_hz))
            pcm = resample_linear(audio.window(t, native), audio.sample_rate_hz, self.info.sample_rate_hz)
            pcm = pcm[:self.info.window_samples]
            pcm = np.pad(pcm, (0, self.info.window_samples - len(pcm)))
        # Voice activity on the newest half second: the voice is 'active' while the person speaks now.
        recent = pcm[-int(0.5 * self.info.sample_rate_hz):]
        level = rms_dbfs(recent)
        speaking = voice_active(recent)
        v, f = float(speaking), float(face_present)
        presence = np.array([[v, f], [v, 0.0], [0.0, f]], np.float32)
        t0 = time.perf_counter()
        faces3 = np.repeat(faces[None], 3, 0)
        if self.head_session is not None:
            features = self.audio_session.run(None, {"audio": pcm[None]})[0]
            probs = self.head_session.run(None, {"audio_features": np.repeat(features, 3, 0),
                                                 "frame_embeddings": faces3, "presence": presence})[0]
        else:
            probs = self.session.run(None, {"audio": np.repeat(pcm[None], 3, 0), "faces": faces3,
                                            "presence": presence})[0]
        infer_ms = (time.perf_counter() - t0) * 1000
        fused = probs[0] if (speaking or face_present) else None
        voice = probs[1] if speaking else None
        face = probs[2] if face_present else None
        fused, voice, face = (self.smoothers[k](t, p) for k, p in (("fused", fused), ("voice", voice),
                                                                    ("face", face)))
        as_dict = lambda p: None if p is None else dict(zip(self.labels, map(float, p)))  # noqa: E731
        latency = {**stage_ms, "inference": infer_ms}
        if clock is not None:
            latency["capture_to_result"] = (clock() - t) * 1000
            if self._newest_capture_wall is not None:
                latency["frame_age"] = (time.monotonic() - self._newest_capture_wall) * 1000
        top = self.labels[int(np.argmax(fused))] if fused is not None else None
        return Result(t, bool(face_present), bool(speaking), as_dict(fused), as_dict(voice), as_dict(face), top, boxes, level,
                      latency)
