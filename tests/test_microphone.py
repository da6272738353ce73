"""The real sounddevice path, fed by a PulseAudio null sink that plays recorded speech (a virtual microphone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from avtca.app.media import load_audio

from conftest import shared

pytestmark = pytest.mark.device


@pytest.fixture
def virtual_mic(tmp_path):
    missing = [b for b in ("pulseaudio", "pacat", "pactl") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"no virtual microphone: {', '.join(missing)} not installed (Debian: pulseaudio pulseaudio-utils "
                    f"libasound2-plugins)")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(["pulseaudio", "-n", "--daemonize=no", "--load=module-native-protocol-unix",
                               "--load=module-null-sink sink_name=vsink", "--exit-idle-time=-1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.skip("PulseAudio did not start here: no virtual microphone")
        subprocess.run(["pactl", "set-default-source", "vsink.monitor"], env=env, check=True)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_microphone_through_sounddevice(virtual_mic, tmp_path):
    speech = load_audio(shared("crema-d", "AudioWAV_16k", "1002_DFA_ANG_XX.wav"), 16000)
    gap = np.zeros(8000, np.float32)
    raw = tmp_path / "speech.raw"
    raw.write_bytes((np.tile(np.concatenate([gap, speech]), 8) * 32767).astype("<i2").tobytes())
    player = subprocess.Popen(["pacat", "--device=vsink", "--format=s16le", "--rate=16000", "--channels=1", str(raw)],
                              env=virtual_mic)
    out = tmp_path / "mic.jsonl"
    try:
        result = subprocess.run([sys.executable, "-m", "avtca.app.live", "--headless", "--camera", "none", "--seconds",
                                 "5", "--out", str(out)], env=virtual_mic, capture_output=True, text=True, timeout=60)
    finally:
        player.terminate()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) >= 30  # 10 Hz for about 5 s
    steps = np.diff([r["t"] for r in lines])
    assert np.allclose(steps, 0.1, atol=0.02)
    assert not any(r["face_present"] for r in lines)
    active = [r for r in lines if r["voice_active"]]
    # level_dbfs is written to 0.1 dB: a level just above -45 dBFS (active) is written as -45.0.
    assert len(active) >= 5 and all(r["voice"] is not None and r["level_dbfs"] >= -45.0 for r in active)


def lines_of(path) -> list[dict]:
    """The complete JSON lines written so far."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(x) for x in text.split("\n")[:-1]]  # the part after the last newline is still being written


def test_microphone_that_stops_is_said_and_its_voice_comes_back(virtual_mic, tmp_path):
    """The sound server stops the virtual microphone mid-run (its sink suspended), then resumes it. While it sends
    nothing the app says so once and marks the voice missing, instead of scoring the last seconds it heard as if
    they were current; when it sends again, the voice is heard again."""
    speech = load_audio(shared("crema-d", "AudioWAV_16k", "1002_DFA_ANG_XX.wav"), 16000)
    loud = np.flatnonzero(np.abs(speech) > 0.02)
    raw = tmp_path / "speech.raw"  # the spoken part back to back: voice in every half second
    raw.write_bytes((np.tile(speech[loud[0]:loud[-1]], 40) * 32767).astype("<i2").tobytes())
    player = subprocess.Popen(["pacat", "--device=vsink", "--format=s16le", "--rate=16000", "--channels=1", str(raw)],
                              env=virtual_mic)
    out = tmp_path / "mic.jsonl"
    live = subprocess.Popen([sys.executable, "-m", "avtca.app.live", "--headless", "--camera", "none", "--seconds",
                             "14", "--out", str(out)], env=virtual_mic, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 40
        while sum(r["voice_active"] for r in lines_of(out)) < 10:
            assert live.poll() is None and time.monotonic() < deadline, "the app never heard the virtual microphone"
            time.sleep(0.1)
        subprocess.run(["pactl", "suspend-sink", "vsink", "1"], env=virtual_mic, check=True)
        stopped = time.monotonic()  # the app stamps ticks on this clock too (CLOCK_MONOTONIC)
        time.sleep(4)
        resumed = time.monotonic()
        subprocess.run(["pactl", "suspend-sink", "vsink", "0"], env=virtual_mic, check=True)
        _, stderr = live.communicate(timeout=60)
    finally:
        live.kill()
        player.terminate()
    assert live.returncode == 0, stderr[-2000:]
    lines = lines_of(out)
    silent = [r for r in lines if stopped + 1 <= r["t"] <= resumed]  # past the slack and the newest half second
    assert len(silent) >= 20
    assert not any(r["voice_active"] or r["voice"] is not None for r in silent)
    assert stderr.count("delivers no audio; the voice is marked missing until it does") == 1, stderr
    after = [r for r in lines if r["t"] > resumed]
    assert any(r["voice_active"] for r in after), "the voice did not come back with the microphone"
