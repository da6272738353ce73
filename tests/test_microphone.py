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
