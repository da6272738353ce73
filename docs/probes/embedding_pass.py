"""Time the fusion stage's embedding pass: PyTorch eager, as the fusion stage computed it before (here on the same
uint8 views), against ONNX Runtime (`frame_embeddings` in model/stages.py, the exported per-frame encoder); 6
views a crop, 2 threads.

Run from the repository root: .venv/bin/python docs/probes/embedding_pass.py [CHECKPOINT [CROPS]]. Without a
checkpoint: the live preset with random weights on random crops. With one: its face CNN on the first CROPS
(default 512) FER2013 PublicTest crops. ONNX Runtime's set-up (the encoder's export and session, once a pass) is
timed apart and counted once in the estimate for the whole training set. See README.md ("Fusion") for what it
printed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from avtca.model.checkpoint import load_checkpoint
from avtca.model.config import preset
from avtca.model.evaluate import Predictor, fer_images
from avtca.model.network import AVTCA
from avtca.model.stages import augmented_views, frame_embeddings, frame_encoder_session, scale_pixels, to_pixels

FACES_IN_TRAINING = 28697
VIEWS = 6


@torch.no_grad()
def eager(model: AVTCA, crops: np.ndarray, views: int, seed: int) -> np.ndarray:
    model.face_encoder.eval()
    out = np.zeros((len(crops), views, model.face_encoder.out_features), np.float16)
    for rows, v, view in augmented_views(crops, views, seed):
        out[rows, v] = model.face_encoder(scale_pixels(to_pixels(view))).numpy()
    return out


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    if argv:
        path = Path(argv[0])
        model, _ = load_checkpoint(path)
        count = int(argv[1]) if len(argv) > 1 else 512
        crops = fer_images(Predictor.checkpoint(path), Path("../shared/data/fer2013"), "test").crops[:count]
    else:
        torch.manual_seed(0)
        model = AVTCA(preset("live"))
        crops = np.random.default_rng(0).integers(0, 256, (1024, 48, 48, 1), dtype=np.uint8)
    model.face_encoder.flip_average = True
    t0 = time.perf_counter()
    frame_encoder_session(model)
    setup = time.perf_counter() - t0  # the export to ONNX and the session, once a pass
    print(f"ONNX Runtime set-up (export and session): {setup:.1f} s")
    for name, fn, fixed in (("PyTorch eager", eager, 0.0), ("ONNX Runtime", frame_embeddings, setup)):
        t0 = time.perf_counter()
        fn(model, crops, VIEWS, 0)
        per_view = (time.perf_counter() - t0 - fixed) / len(crops) / VIEWS
        whole = fixed + per_view * FACES_IN_TRAINING * VIEWS
        print(f"{name}: {1000 * per_view:.2f} ms a view over {len(crops)} crops x {VIEWS} views (set-up left out); "
              f"{FACES_IN_TRAINING:,} training faces: {whole / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
