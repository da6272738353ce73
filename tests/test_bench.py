"""avtca-bench runs briefly and writes well-formed JSON (figures only; no speed is asserted)."""

from __future__ import annotations

import json
import sys
import time

import pytest

from avtca.model import bench

from conftest import ctrl_c_once

pytestmark = pytest.mark.slow


def test_quick_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key in ("live.params", "live.gflops", "live.torch.batch1.median_ms", "live.ort_fp32.batch1.median_ms",
                "live.ort_fp32.batch3.p95_ms", "live.ratio_ort_fp32_to_torch.batch1", "live.tick.median_ms",
                "live.frame_encode.median_ms", "model.frame_encode.median_ms", "env.cpu", "env.threads", "env.onnxruntime"):
        assert key in figures, key
    for key, value in figures.items():
        if key.endswith("_ms"):
            assert value > 0, key
    assert figures["live.params"] > 100_000 and figures["live.gflops"] > 0
    assert figures["model.path"] == str(bench.DEFAULT_MODEL)  # the model the encoder row timed is named
    table = bench.markdown(figures)
    assert "`--model` (pipeline rows too): `exported/avtca.onnx`" in table  # relative to the repository
    assert f"| --model per new face crop (its encoder, flip averaging included, median ms) | " \
           f"{figures['model.frame_encode.median_ms']:g} |" in table
    assert "live.tick.median_ms" in capsys.readouterr().out


def test_face_stage_bench_times_the_training_step_and_checks_augmentation(tmp_path, capsys):
    out = tmp_path / "face.json"
    assert bench.main(["--face-stage", "cpu", "--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["threads"] == 1
    assert figures["live.face_stage.cpu.step_only.images_per_second"] > 0
    assert figures["live.face_stage.cpu.augment_on_cpu.images_per_second"] > 0
    assert figures["live.face_stage.cpu.augment_max_abs_difference"] == 0.0  # one device: the same batch
    assert "face stage on cpu, augment_on_cpu:" in capsys.readouterr().out


def test_face_stage_bench_on_cuda_without_a_gpu_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device; the refusal is for machines without one")
    assert bench.main(["--face-stage", "cuda"]) == 2
    assert "sees no CUDA device; use --face-stage cpu" in capsys.readouterr().err


def test_a_bad_model_or_figures_file_is_one_sentence_before_any_timing(tmp_path, capsys):
    missing = tmp_path / "gone.onnx"
    assert bench.main(["--quick", "--model", str(missing)]) == 1
    out = capsys.readouterr()
    assert f"avtca-bench: model file {missing} does not exist" in out.err and out.out == ""  # nothing was timed
    notes = tmp_path / "notes.txt"
    notes.write_text("not json")
    with pytest.raises(SystemExit):
        bench.main(["--markdown", str(notes)])
    assert f"argument --markdown: {notes} is not a readable JSON file (Expecting value" in capsys.readouterr().err


def test_bench_stopped_midway_prints_what_it_measured_and_writes_nothing(tmp_path):
    """Ctrl-C in the middle of the face stage's 100 timed steps (a minute or more on a 2-core CPU): the figures
    measured so far are printed, the --json file is not written (a partial file would pass for a whole one), and
    one sentence says so, exit code 130."""
    figures = tmp_path / "bench.json"
    started = time.monotonic()
    returncode, stderr = ctrl_c_once([sys.executable, "-m", "avtca.model.bench", "--face-stage", "cpu", "--threads",
                                      "1", "--json", str(figures)], lambda: time.monotonic() > started + 15)
    assert returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == ("avtca-bench: stopped; the figures above were measured before that, "
                                               "and nothing was written")
    assert not figures.exists()
