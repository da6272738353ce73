"""Face-only accuracy of two exported models together: the mean of their face-only probabilities, at a few
weights, on FER2013 PublicTest without the copies of training images (each image as 8 identical frames, the
voice marked missing, as `avtca-eval --dataset fer2013` scores one model).

Run from the repository root: .venv/bin/python docs/probes/face_ensemble.py A.onnx B.onnx (about 6 minutes
here). The weights are scored on the validation images, so the best of them is a validation figure, not a
held-out one. See docs/experiments.md for what it printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from avtca.model.evaluate import Predictor, face_probabilities, fer_images


def main(a: str, b: str) -> None:
    first, second = Predictor.onnx(Path(a)), Predictor.onnx(Path(b))
    if (first.labels, first.face_size, first.face_channels) != (second.labels, second.face_size, second.face_channels):
        raise SystemExit(f"{a} and {b} differ in labels or face crops; they cannot be averaged")
    faces = fer_images(first, Path("../shared/data/fer2013"), "test")
    pa, pb = face_probabilities(first, faces.crops), face_probabilities(second, faces.crops)
    print(f"{len(faces.y)} PublicTest images, {faces.notes['duplicates_of_training_removed']} copies of training "
          f"images left out")
    for w in (1.0, 0.75, 0.5, 0.3, 0.25, 0.0):
        accuracy = ((w * pa + (1 - w) * pb).argmax(1) == faces.y).mean()
        print(f"{w:.2f} x {a} + {1 - w:.2f} x {b}: accuracy {accuracy:.2%}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: face_ensemble.py A.onnx B.onnx (two models exported by avtca-export)")
    main(sys.argv[1], sys.argv[2])
