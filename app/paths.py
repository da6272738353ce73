"""Where the shipped files live, both in a checkout and in an installed wheel.

In a checkout `app/` sits beside `exported/` and `assets/`; in a wheel they are installed as
`avtca/app`, `avtca/exported` and `avtca/assets`. Either way they share one parent.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORTED_DIR = ROOT / "exported"
ASSETS_DIR = ROOT / "assets"
DEFAULT_MODEL = EXPORTED_DIR / "avtca.onnx"
FACE_DETECTOR_MODEL = ASSETS_DIR / "face_detection_short_range.tflite"
DEMO_CLIP = ASSETS_DIR / "demo_cremad.mp4"
