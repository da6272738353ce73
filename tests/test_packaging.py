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


def test_model_card_times_each_stage_from_its_own_run_folder(tmp_path, monkeypatch):
    """Two stages of one kind (a face CNN trained on, say) are timed from their own --out folders."""
    import json

    from avtca.model.card import stage_folder, training_section

    monkeypatch.chdir(tmp_path)
    seconds = {"runs/a/face": [100.0, 120.0], "runs/b/face_more": [90.0, 95.0, 99.0], "runs/a/voice": [5.0, 5.0]}
    for folder, times in seconds.items():
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "history.json").write_text(json.dumps([{"seconds": s} for s in times]))
    amd, intel = "AMD EPYC, 2 cores, AVX2", "Intel(R) Xeon(R) Processor, 2 cores, AVX512"
    stages = [{"stage": "face", "command": "avtca-train --stage face --out runs/a/face", "best_epoch": 2,
               "precision": "bf16", "machine": intel},
              {"stage": "face", "command": "avtca-train --stage face --init runs/a/face/best.pt --out=runs/b/face_more",
               "best_epoch": 3, "precision": "fp32", "machine": amd},
              {"stage": "voice", "command": "avtca-train --stage voice --out gone/voice", "best_epoch": 1,
               "precision": "fp32", "machine": amd,
               "sittings": [{"first_epoch": 1, "precision": "bf16", "machine": intel},
                            {"first_epoch": 2, "precision": "fp32", "machine": amd}]}]
    text = training_section({"training": {"stages": stages}}, runs=tmp_path / "runs" / "a")
    assert ("- face stage: 2 epochs, 3.7 min of epoch time (fastest epoch 100 s), best validation epoch 2, bf16 on "
            f"{intel}\n") in text
    assert f"- face stage: 3 epochs, 4.7 min of epoch time (fastest epoch 90 s), best validation epoch 3, fp32 on {amd}\n" in text
    # The voice stage's folder moved: found by its name under --runs.
    assert stage_folder(stages[2]["command"], tmp_path / "runs" / "a") == tmp_path / "runs" / "a" / "voice"
    # A stage run in two sittings names each one's epochs, precision and machine.
    assert (f"- voice stage: 2 epochs, 0.2 min of epoch time (fastest epoch 5 s), best validation epoch 1, epochs 1-1 "
            f"bf16 on {intel}, epochs 2-2 fp32 on {amd}\n") in text
    # Each CPU the stages ran on, once: a card made on another machine does not name that one.
    assert (f"- Training time on the CPU ({amd}; {intel}; sum of epoch times as they ran, slowed by any other work on "
            "the machine then; data decoding and caching not included): 9 min; every epoch as fast as the fastest: "
            "8 min") in text
    assert "(`make model` runs them)" in text and "GPU" not in text


def test_model_card_times_the_training_from_the_shipped_histories_without_the_run_folders(tmp_path):
    """make model-export ships each stage's history beside the evaluations; a card made where the run folders
    are not (a fresh clone) still times the training from those, and the run folder wins where it is."""
    import json

    from avtca.model.card import training_section

    shipped = tmp_path / "eval" / "training"
    shipped.mkdir(parents=True)
    (shipped / "face_history.json").write_text(json.dumps([{"seconds": 100.0}, {"seconds": 110.0}]))
    (shipped / "voice_history.json").write_text(json.dumps([{"seconds": 4.0}] * 3))
    run = tmp_path / "runs" / "voice"
    run.mkdir(parents=True)
    (run / "history.json").write_text(json.dumps([{"seconds": 6.0}] * 2))
    stages = [{"stage": "face", "command": f"avtca-train --stage face --out {tmp_path / 'gone' / 'face'}",
               "best_epoch": 2},
              {"stage": "voice", "command": f"avtca-train --stage voice --out {run}", "best_epoch": 1},
              {"stage": "fusion", "command": f"avtca-train --stage fusion --out {tmp_path / 'gone' / 'fusion'}",
               "best_epoch": 1}]
    text = training_section({"training": {"stages": stages}}, runs=None, shipped=shipped)
    assert "- face stage: 2 epochs, 3.5 min of epoch time (fastest epoch 100 s), best validation epoch 2" in text
    assert "- voice stage: 2 epochs, 0.2 min of epoch time (fastest epoch 6 s), best validation epoch 1" in text
    assert "fusion stage:" not in text  # neither its run folder nor a shipped history: not timed, not invented
    assert "(which CPU was not recorded; sum of epoch times" in text and ": 4 min; every epoch" in text
    assert "face stage:" not in training_section({"training": {"stages": stages}}, runs=None)


def test_model_card_times_gpu_stages_apart_from_the_cpu_total(tmp_path, monkeypatch):
    import json

    from avtca.model.card import on_gpu, training_section

    monkeypatch.chdir(tmp_path)
    for folder, times in {"runs/face": [600.0, 660.0], "runs/wide": [9.0, 8.0, 8.5]}.items():
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "history.json").write_text(json.dumps([{"seconds": s} for s in times]))
    stages = [{"stage": "face", "command": "avtca-train --stage face --out runs/face", "best_epoch": 1},
              {"stage": "face", "command": "avtca-train --stage face --device cuda --bf16 --out runs/wide",
               "best_epoch": 3}]
    text = training_section({"training": {"stages": stages}}, runs=None)
    assert "`make model` runs the recipe on the CPU alone" in text
    assert "- face stage: 2 epochs, 21.0 min of epoch time (fastest epoch 600 s)" in text
    assert "- face stage (GPU): 3 epochs, 0.4 min of epoch time (fastest epoch 8 s), best validation epoch 3" in text
    assert "- Training time on the CPU (which CPU was not recorded; sum" in text  # records older than the field
    assert "): 21 min; every epoch as fast as the fastest: 20 min" in text
    assert "- On the GPU: 0.4 min of epoch time (not included above)" in text
    assert on_gpu("x --device=cuda") and not on_gpu("x --device cpu") and not on_gpu("x --face-from cuda")


def test_model_card_shows_the_ferplus_crowd_row_and_the_duplicates(tmp_path):
    import json

    import numpy as np

    from avtca.model.card import evaluation_section
    from avtca.model.config import LIVE_LABELS
    from avtca.model.metrics import summarise

    result = summarise(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 4]), LIVE_LABELS)
    crowd = summarise(np.array([0, 1, 2]), np.array([0, 1, 5]), LIVE_LABELS)
    crowd["crowd_agrees_with_fer2013"] = 2 / 3
    result.update(ferplus_majority=crowd, notes={"duplicates_of_training_removed": 1},
                  duplicates_of_training={"n": 1, "accuracy_on_them": 1.0, "accuracy_with_them": 0.8, "n_with_them": 5})
    (tmp_path / "fer2013_publictest.json").write_text(json.dumps(result))
    text, found = evaluation_section(tmp_path)
    assert list(found) == ["fer2013_publictest.json"]
    assert "| as above | 75.0% |" in text and "| 4 |" in text
    assert "| against the FER+ crowd's majority | 66.7% |" in text and "| 3 |" in text
    assert "agrees with FER2013's own label on 66.7% of them" in text
    assert "--ferplus DATA/ferplus --json" in text
    assert ("1 PublicTest images that are exact pixel copies of training images were removed before scoring. Scored "
            "with them, as published FER2013 figures usually are: 80.0% (n=5; 100.0% on the copies alone).") in text


def test_model_card_names_the_face_cnn_stage_resolutions():
    from dataclasses import asdict, replace

    from avtca.model.card import face_cnn
    from avtca.model.config import preset

    live = preset("live")
    assert "stages at 12, 6, 3 pixels a side" in face_cnn(asdict(live))
    sharper = face_cnn(asdict(replace(live, stem_pool_stride=1, face_flip_average=True)))
    assert "widths 32, 128, 256, 512, 512, fused (dense 3x3)" in sharper
    assert "stages at 24, 12, 6 pixels a side. Each frame's embedding is the mean" in sharper
    assert "stages at 12, 6, 6 pixels a side." in face_cnn(asdict(replace(live, video_strides=(2, 1))))


def test_model_card_names_the_face_args_a_face_command_used():
    from avtca.model.card import face_args, training_section

    command = "avtca-train --stage face --epochs 40 --bf16 --compile --set stem_pool_stride=1 --out runs/f"
    assert face_args(command) == "--compile --set stem_pool_stride=1"
    assert face_args("avtca-train --stage face --set=video_widths=16,64,128,256,512") == "--set=video_widths=16,64,128,256,512"
    stages = [{"stage": "face", "command": command, "best_epoch": 35},
              {"stage": "voice", "command": "avtca-train --stage voice --compile --out runs/v", "best_epoch": 46}]
    text = training_section({"training": {"stages": stages}}, runs=None)
    assert '(`make model FACE_ARGS="--compile --set stem_pool_stride=1"` runs them)' in text
    stages[0]["command"] = command.replace("--bf16", "--bf16 --device cuda")  # the face stage on a lent GPU
    text = training_section({"training": {"stages": stages}}, runs=None)
    assert ('ran on a lent GPU; `make model FACE_ARGS="--compile --set stem_pool_stride=1"` runs the recipe on the '
            'CPU alone)') in text


def test_model_card_refuses_a_card_without_evaluations_or_model(tmp_path, capsys):
    from avtca.model.card import main

    (tmp_path / "empty").mkdir()
    card = tmp_path / "card.md"
    assert main(["--model", str(paths.DEFAULT_MODEL), "--eval-dir", str(tmp_path / "empty"), "-o", str(card)]) == 1
    assert (f"{tmp_path / 'empty'} holds none of the evaluations a card reports (fer2013_publictest.json, "
            "ravdess_17-20.json") in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "gone.onnx"), "-o", str(card)]) == 1
    assert f"model file {tmp_path / 'gone.onnx'} does not exist" in capsys.readouterr().err
    assert not card.exists()
    # The shipped model and its evaluations make the card.
    assert main(["--model", str(paths.DEFAULT_MODEL), "--eval-dir", str(paths.EXPORTED_DIR / "eval"), "-o",
                 str(card)]) == 0
    assert "| input | accuracy | macro-F1 | UAR | n |" in card.read_text()
