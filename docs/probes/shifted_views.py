"""Does a still face shown as 8 slightly shifted views, instead of 8 identical frames, score better face-only?

Run from the repository root: .venv/bin/python docs/probes/shifted_views.py (about 3 minutes, one thread).
It runs the exported per-frame encoder on each FER2013 PublicTest image (exact duplicates of training images
removed) shifted by whole pixels (edges repeated), then the exported head, face only, three ways. See
docs/experiments.md for what it printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avtca.app.modelfile import open_parts, read_model_info
from avtca.model.evaluate import Predictor, fer_images
from avtca.model.metrics import summarise

SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (2, 0)]  # (dy, dx), one per frame
BATCH = 256


def shifted(crops: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(crops, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    size = crops.shape[1]
    return np.ascontiguousarray(padded[:, 2 + dy:2 + dy + size, 2 + dx:2 + dx + size])


def main() -> None:
    model = Path("exported/avtca.onnx")
    parts, reason = open_parts(model, read_model_info(model), threads=1)
    if parts is None:
        raise SystemExit(f"shifted_views: {reason}")
    frames, _, head = parts
    audio_shape = tuple(head.get_inputs()[0].shape[1:])  # (mel bands, STFT frames); the voice is marked missing
    pred = Predictor.onnx(model, 1)
    faces = fer_images(pred, Path("../shared/data/fer2013"), "test")
    crops, y, notes = faces.crops, faces.y, faces.notes
    print(f"{len(crops)} images, {notes['duplicates_of_training_removed']} duplicates of training images removed")
    views = np.stack([np.concatenate([frames.run(None, {"crops": shifted(crops[i:i + BATCH], dy, dx)})[0]
                                      for i in range(0, len(crops), BATCH)]) for dy, dx in SHIFTS], 1)

    def accuracy(clips: np.ndarray) -> float:
        probs = [head.run(None, {"audio_features": np.zeros((len(b), *audio_shape), np.float32),
                                 "frame_embeddings": b.astype(np.float32),
                                 "presence": np.tile(np.float32([[0, 1]]), (len(b), 1))})[0]
                 for b in (clips[i:i + BATCH] for i in range(0, len(clips), BATCH))]
        return summarise(y, np.concatenate(probs).argmax(1), pred.labels)["accuracy"]

    frames_per_clip = len(SHIFTS)
    print(f"8 identical frames (as avtca-eval feeds them): {accuracy(np.repeat(views[:, :1], frames_per_clip, 1)):.2%}")
    print(f"the 8 shifted views as the clip's frames:      {accuracy(views):.2%}")
    print(f"the views' mean embedding in every frame:      "
          f"{accuracy(np.repeat(views.mean(1, keepdims=True), frames_per_clip, 1)):.2%}")


if __name__ == "__main__":
    main()
