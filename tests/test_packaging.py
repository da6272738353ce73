"""The installed distribution: one import name, no torch in the app, shipped files found."""

from __future__ import annotations

import subprocess
import sys

from avtca.app import paths


def test_import_app_never_loads_torch():
    code = (
        "import sys, importlib, pkgutil, avtca.app\n"
        "for m in pkgutil.iter_modules(avtca.app.__path__):\n"
        "    importlib.import_module('avtca.app.' + m.name)\n"
        "import avtca.model, avtca.model.config\n"
        "heavy = [m for m in ('torch', 'onnx', 'torchaudio') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_bare_app_or_model_packages():
    result = subprocess.run([sys.executable, "-c", "import app"], capture_output=True, text=True, cwd="/")
    assert result.returncode != 0
    result = subprocess.run([sys.executable, "-c", "import model"], capture_output=True, text=True, cwd="/")
    assert result.returncode != 0


def test_shipped_files_are_found():
    assert paths.DEFAULT_MODEL.is_file(), paths.DEFAULT_MODEL
    assert paths.FACE_DETECTOR_MODEL.is_file() and paths.FACE_DETECTOR_MODEL.stat().st_size > 200_000
    assert (paths.ASSETS_DIR / "face_detection_short_range.LICENSE").is_file()


def test_shipped_model_is_valid_and_says_whether_it_is_trained():
    from avtca.app.modelfile import read_model_info

    info = read_model_info(paths.DEFAULT_MODEL)
    assert info.preset == "live"
    card = (paths.EXPORTED_DIR / "MODEL_CARD.md").read_text()
    if not info.trained:
        assert "UNTRAINED" in card and info.metadata["training"] is None
    else:
        assert info.metadata["training"]["command"] in card
