"""A face-stage checkpoint's own head on FER2013 PublicTest without the copies of training images, with and
without flip averaging (the per-frame face CNN and the linear head the face stage trains, before fusion).

Run from the repository root: .venv/bin/python docs/probes/face_head.py runs/exp/face_pool1/best.pt (a few
minutes). See docs/experiments.md for what it printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from avtca.model.checkpoint import load_checkpoint
from avtca.model.evaluate import Predictor, fer_images
from avtca.model.metrics import summarise
from avtca.model.stages import FrameClassifier, face_predict


def main(path: str) -> None:
    model, state = load_checkpoint(Path(path))
    classifier = FrameClassifier(model)
    classifier.load_state_dict(state["extra"]["stage_module"])
    faces = fer_images(Predictor.checkpoint(Path(path)), Path("../shared/data/fer2013"), "test")
    print(f"{path}: epoch {state['extra']['best'].get('epoch')}, {len(faces.crops)} images, "
          f"{faces.notes['duplicates_of_training_removed']} copies of training images left out")
    for flip in (False, True):
        model.face_encoder.flip_average = flip
        predicted = face_predict(classifier, faces.crops)
        result = summarise(faces.y, predicted, model.cfg.labels)
        print(f"flip averaging {'on ' if flip else 'off'}: accuracy {result['accuracy']:.2%}, "
              f"macro-F1 {result['macro_f1']:.3f}, UAR {result['uar']:.2%}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: face_head.py CHECKPOINT (a checkpoint written by avtca-train --stage face)")
    main(sys.argv[1])
