"""Decode once, train many times: face crops and audio arrays cached as .npz files.

The cache key is the list of files (with sizes and mtimes) and the target format, so a changed dataset
or model rate is decoded afresh. Bad files are counted by reason and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from ..app.faces import prepare_crop
from ..app.media import MediaError, load_audio
from .datasets import Item

SILENCE_PEAK = 1e-4  # a clip whose absolute peak stays below this is silent


def cache_dir() -> Path:
    return Path(os.environ.get("AVTCA_CACHE", Path.home() / ".cache" / "avtca"))


def _key(kind: str, items: list[Item], *params) -> str:
    h = hashlib.sha256(repr((kind, params)).encode())
    for item in items:
        st = item.path.stat() if item.path.exists() else None
        h.update(f"{item.path}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}|{item.start}|{item.end}".encode())
    return f"{kind}-{h.hexdigest()[:20]}"


def load_face_images(items: list[Item], size: int, channels: int) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Face images -> (crops (N, size, size, channels) uint8, indices of the items kept, skipped counts)."""
    path = cache_dir() / (_key("faces", items, size, channels) + ".npz")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return z["crops"], z["kept"], Counter(dict(zip(z["skip_reasons"].tolist(), z["skip_counts"].tolist())))
    crops, kept, skipped = [], [], Counter()
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    for i, item in enumerate(items):
        image = cv2.imread(str(item.path), flag)
        if image is None:
            skipped["unreadable image"] += 1
            continue
        if image.std() < 1.0:
            skipped["blank image"] += 1
            continue
        if channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        crops.append(prepare_crop(image, size, channels))
        kept.append(i)
    out = np.stack(crops) if crops else np.zeros((0, size, size, channels), np.uint8)
    _save(path, crops=out, kept=np.asarray(kept, np.int64), skipped=skipped)
    return out, np.asarray(kept, np.int64), skipped


def load_audio_clips(items: list[Item], sample_rate_hz: int) -> tuple[list[np.ndarray], np.ndarray, Counter]:
    """Audio (or the audio track of video) -> (mono float32 arrays at the rate, indices kept, skipped counts)."""
    path = cache_dir() / (_key("audio", items, sample_rate_hz) + ".npz")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        samples = z["samples"]  # each z[...] access reads the array afresh: read it once
        bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
        clips = [samples[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return clips, z["kept"], Counter(dict(zip(z["skip_reasons"].tolist(), z["skip_counts"].tolist())))
    clips, kept, skipped = [], [], Counter()
    for i, item in enumerate(items):
        if item.path.is_file() and item.path.stat().st_size == 0:
            skipped["empty file"] += 1
            continue
        try:
            audio = load_audio(item.path, sample_rate_hz)
        except MediaError as e:
            skipped["no audio track" if "no audio track" in str(e) else "unreadable media"] += 1
            continue
        if item.start is not None or item.end is not None:
            a = int((item.start or 0) * sample_rate_hz)
            b = int(item.end * sample_rate_hz) if item.end is not None else len(audio)
            audio = audio[a:b]
        if len(audio) == 0:
            skipped["zero-length audio"] += 1
            continue
        if np.abs(audio).max() < SILENCE_PEAK:
            skipped["silent audio"] += 1
            continue
        clips.append(audio)
        kept.append(i)
    samples = np.concatenate(clips) if clips else np.zeros(0, np.float32)
    _save(path, samples=samples, lengths=np.asarray([len(c) for c in clips], np.int64),
          kept=np.asarray(kept, np.int64), skipped=skipped)
    return clips, np.asarray(kept, np.int64), skipped


def atomic_save(path: Path, write) -> None:
    """Write `path` through `write(temporary path)` and a rename: a reader never sees a half-written file, and two
    processes preparing the same data at once (the ranks of a torchrun job) each write their own temporary file,
    the last rename winning with the same contents. The temporary name keeps the suffix, which numpy insists on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _save(path: Path, skipped: Counter, **arrays) -> None:
    atomic_save(path, lambda tmp: np.savez(tmp, skip_reasons=np.asarray(list(skipped), dtype=str),
                                           skip_counts=np.asarray(list(skipped.values()), dtype=np.int64), **arrays))


def copies_of(reference: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """A bool mask over `crops`: True where an image's pixels exactly equal those of some image in `reference`
    (test images that are copies of training images)."""
    seen = {hashlib.sha1(c.tobytes()).digest() for c in reference}
    return np.asarray([hashlib.sha1(c.tobytes()).digest() in seen for c in crops], bool)
