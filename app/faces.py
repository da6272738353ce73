"""Find faces with MediaPipe's BlazeFace and crop them the one way training and the app share. Torch-free.

Detection uses the MediaPipe Tasks FaceDetector with the short-range model shipped in assets/ (current
mediapipe wheels carry no models). Cropping: a square centred on the box, FACE_MARGIN wider on each side,
edges replicated where it leaves the frame, resized to the model's face size, grayscale where the model is.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .paths import FACE_DETECTOR_MODEL

FACE_MARGIN = 0.15  # share of the box size added on each side; FER2013 crops show forehead to chin
MIN_DETECTION_CONFIDENCE = 0.7  # real faces in our clips score 0.88-0.97; clouds and textures reach 0.6
# What MediaPipe's runtime (LiteRT, TFLite, absl) writes to the process's stderr when a detector starts, first
# runs and stops, whatever GLOG_minloglevel says: its informational lines and absl's notes below WARNING.
NATIVE_CHATTER = re.compile(r"^(INFO: |I\d{4} |W\d{4} .*inference_runner_litert|WARNING: Logging before InitGoogle)")


@dataclass(frozen=True)
class Face:
    """A detected face: box in pixels of the frame it came from, and the detector's score."""

    x: int
    y: int
    w: int
    h: int
    score: float

    @property
    def area(self) -> int:
        return self.w * self.h


def prepare_crop(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Any face crop (H, W) gray or (H, W, 3) RGB uint8 -> (size, size, channels) uint8, the model's format."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.shape[0] != size or image.shape[1] != size:
        shrink = image.shape[0] > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if channels == 1:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return gray[:, :, None]
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(rgb)


def crop_face(frame: np.ndarray, face: Face, size: int, channels: int, margin: float = FACE_MARGIN) -> np.ndarray:
    """The square crop of `face` in an RGB (H, W, 3) uint8 frame, as (size, size, channels) uint8."""
    side = max(face.w, face.h) * (1.0 + 2.0 * margin)
    cx, cy = face.x + face.w / 2.0, face.y + face.h / 2.0
    scale = size / side
    # One affine warp crops, scales and replicates edges: cheaper than pad + slice + resize.
    matrix = np.array([[scale, 0.0, size / 2.0 - cx * scale], [0.0, scale, size / 2.0 - cy * scale]], np.float32)
    source = frame if channels == 3 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    crop = cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop[:, :, None] if channels == 1 else crop


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold back MediaPipe's native chatter written to file descriptor 2 meanwhile (see NATIVE_CHATTER); any other
    line written there meanwhile (an error, a Python warning from another thread) is written out afterwards."""
    fd = 2  # where native code writes, whatever sys.stderr is
    try:
        saved = os.dup(fd)
    except OSError:  # no file descriptor 2 (a windowed process): nothing to hold back
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines()
                    if not NATIVE_CHATTER.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


class FaceDetectorError(Exception):
    """The face detector could not be created."""


class FaceDetector:
    """MediaPipe Tasks BlazeFace, short range. `detect` takes RGB uint8 frames; boxes come back in pixels."""

    def __init__(self, model_path: Path = FACE_DETECTOR_MODEL, min_confidence: float = MIN_DETECTION_CONFIDENCE,
                 video_mode: bool = True):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's native logging is chatty at INFO
        try:
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise FaceDetectorError(f"mediapipe is not installed ({e}); install avtca with pip to get it") from e
        if not Path(model_path).is_file():
            raise FaceDetectorError(f"face detector model {model_path} is missing; reinstall avtca or restore assets/")
        self._mp_image = __import__("mediapipe").Image
        self._image_format = __import__("mediapipe").ImageFormat.SRGB
        mode = vision.RunningMode.VIDEO if video_mode else vision.RunningMode.IMAGE
        options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                             running_mode=mode, min_detection_confidence=min_confidence)
        with quiet_native_stderr():
            self._detector = vision.FaceDetector.create_from_options(options)
        self._video_mode = video_mode
        self._last_ms = -1
        self._first = True

    def detect(self, frame: np.ndarray, t_seconds: float = 0.0) -> list[Face]:
        """Faces in an RGB (H, W, 3) uint8 frame, largest first."""
        image = self._mp_image(image_format=self._image_format, data=np.ascontiguousarray(frame))
        with quiet_native_stderr() if self._first else contextlib.nullcontext():  # its first run has notes too
            if self._video_mode:
                # VIDEO mode needs strictly increasing timestamps in milliseconds.
                ms = max(int(t_seconds * 1000), self._last_ms + 1)
                self._last_ms = ms
                result = self._detector.detect_for_video(image, ms)
            else:
                result = self._detector.detect(image)
        self._first = False
        h, w = frame.shape[:2]
        faces = []
        for det in result.detections:
            b = det.bounding_box
            x0, y0 = max(0, b.origin_x), max(0, b.origin_y)
            x1, y1 = min(w, b.origin_x + b.width), min(h, b.origin_y + b.height)
            if x1 > x0 and y1 > y0:
                faces.append(Face(int(x0), int(y0), int(x1 - x0), int(y1 - y0), float(det.categories[0].score)))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def close(self) -> None:
        with quiet_native_stderr():
            self._detector.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
