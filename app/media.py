"""Decode audio and video from media files with PyAV (its wheel ships FFmpeg's codecs). Torch-free.

Training and the app's --source both read files through these functions, so a clip means the same to both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .cli import not_a_file


class MediaError(Exception):
    """A media file that cannot be opened or lacks the track asked for."""


def _open(path: Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"media file {path} {not_a_file(path)}; give a video or audio file")
    try:
        return av.open(str(path))
    except Exception as e:  # PyAV raises InvalidDataError, OSError, ... for unreadable input
        raise MediaError(f"media file {path} could not be opened ({type(e).__name__}: {e}); is it a complete audio "
                         f"or video file?") from e


def has_tracks(path: str | Path) -> tuple[bool, bool]:
    """(has an audio track, has a video track)."""
    with _open(Path(path)) as container:
        return bool(container.streams.audio), bool(container.streams.video)


def load_audio(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """The file's first audio track as mono float32 in [-1, 1] at sample_rate_hz, shape (samples,)."""
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"media file {path} has no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate_hz)
        chunks = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.FFmpegError as e:
            raise MediaError(f"media file {path}: audio could not be decoded ({e})") from e
    if not chunks:
        return np.zeros(0, np.float32)
    return np.clip(np.concatenate(chunks).astype(np.float32, copy=False), -1.0, 1.0)


def video_info(path: str | Path) -> tuple[float, float, int, int]:
    """(frames per second, duration in seconds, width, height) of the first video track."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"media file {path} has no video track")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        return fps, duration, stream.codec_context.width, stream.codec_context.height


def iter_video_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """(presentation time in seconds from the first frame, RGB uint8 (H, W, 3)) for every frame."""
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"media file {path} has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / float(stream.average_rate or 30)
                t0 = t if t0 is None else t0
                yield t - t0, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise MediaError(f"media file {path}: video could not be decoded ({e})") from e
