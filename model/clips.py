"""Audio-video clips -> (audio, T face crops) with the app's own face detector and cropper, cached.

Each clip is cut like the app cuts it: the centre window of the audio, and T face crops at the times
`clip_times` gives for that window (the app's own choice: evenly spread, moved onto its 0.125-s grid). A frame
without a face borrows the nearest frame's crop; a clip with no face at all is skipped and counted.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..app.audio import centre_window
from ..app.faces import FaceDetector, crop_face
from ..app.media import MediaError, iter_video_frames, load_audio
from ..app.pipeline import clip_times
from .cache import _key, _save, cache_dir
from .config import AVTCAConfig
from .datasets import Item


def clip_faces(path, cfg: AVTCAConfig, detector: FaceDetector, duration: float) -> tuple[np.ndarray | None, int]:
    """(T, H, W, C) uint8 crops for the centre window of a video, and how many of the T frames had no face."""
    start = max(0.0, (duration - cfg.window_seconds) / 2)
    wanted = clip_times(start + cfg.window_seconds, cfg.window_seconds, cfg.frames)
    crops: list[np.ndarray | None] = [None] * cfg.frames
    nearest = [float("inf")] * cfg.frames
    frames: dict[int, np.ndarray] = {}
    for t, rgb in iter_video_frames(path):
        for i, tw in enumerate(wanted):
            if abs(t - tw) < nearest[i]:
                nearest[i] = abs(t - tw)
                frames[i] = rgb
    missing = 0
    for i in range(cfg.frames):
        if i not in frames:
            missing += 1
            continue
        faces = detector.detect(frames[i])
        if faces:
            crops[i] = crop_face(frames[i], faces[0], cfg.face_size, cfg.face_channels)
        else:
            missing += 1
    found = [i for i, c in enumerate(crops) if c is not None]
    if not found:
        return None, missing
    for i in range(cfg.frames):
        if crops[i] is None:
            crops[i] = crops[min(found, key=lambda j: abs(j - i))]
    return np.stack(crops), missing


def load_av_clips(items: list[Item], cfg: AVTCAConfig) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, Counter]:
    """(centre audio windows, face crops (N, T, H, W, C), indices of items kept, skipped counts)."""
    path = cache_dir() / (_key("av", items, cfg.sample_rate_hz, cfg.window_seconds, cfg.frames, cfg.face_size,
                                cfg.face_channels, "clip_times") + ".npz")
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        skipped = Counter(dict(zip(z["skip_reasons"].tolist(), z["skip_counts"].tolist())))
        return list(z["audio"]), z["faces"], z["kept"], skipped
    audio, faces, kept, skipped = [], [], [], Counter()
    with FaceDetector(video_mode=False) as detector:
        for i, item in enumerate(items):
            try:
                pcm = load_audio(item.path, cfg.sample_rate_hz)
                crops, missing = clip_faces(item.path, cfg, detector, len(pcm) / cfg.sample_rate_hz)
            except MediaError as e:
                skipped["no audio track" if "no audio track" in str(e) else "unreadable media"] += 1
                continue
            if crops is None:
                skipped["no face in any frame"] += 1
                continue
            skipped["frames without a face (borrowed a neighbour's crop)"] += missing
            audio.append(centre_window(pcm, cfg.window_samples))
            faces.append(crops)
            kept.append(i)
    shape = (0, cfg.frames, cfg.face_size, cfg.face_size, cfg.face_channels)
    faces_arr = np.stack(faces) if faces else np.zeros(shape, np.uint8)
    audio_arr = np.stack(audio) if audio else np.zeros((0, cfg.window_samples), np.float32)
    _save(path, audio=audio_arr, faces=faces_arr, kept=np.asarray(kept, np.int64), skipped=skipped)
    return list(audio_arr), faces_arr, np.asarray(kept, np.int64), skipped
