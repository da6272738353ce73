"""Each expected fault gives one clear message, no traceback, and the app goes on wherever it can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from avtca.app.capture import CameraSource, DeviceSource, FileSource, open_source
from avtca.app.faces import FaceDetector
from avtca.app.media import iter_video_frames, load_audio
from avtca.app.modelfile import open_model
from avtca.app.paths import DEFAULT_MODEL, DEMO_CLIP
from avtca.app.pipeline import Engine

from conftest import LITERT_ALIGNMENT, shared


def run_live(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avtca.app.live", "--headless", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_clear_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr[-2000:]


def write_video_only(src: Path, dst: Path, seconds: float = 2.0) -> Path:
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(30))
        for i, (t, rgb) in enumerate(iter_video_frames(src)):
            if t > seconds:
                break
            if i == 0:
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dst


def write_audio_only(src: Path, dst: Path) -> Path:
    pcm = load_audio(src, 16000)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray((pcm[None] * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dst


def test_no_camera_and_no_microphone_say_so():
    result = run_live("--camera", "7", "--mic", "no-such-microphone")
    assert result.returncode == 1
    assert_one_clear_error(result, "no camera could be opened at 7", "neither a camera nor a microphone could be "
                           "opened (the microphone: no microphone matching 'no-such-microphone'")


def test_no_camera_falls_back_to_the_demo_clip():
    messages = []
    source = open_source(None, None, None, 16000, True, DEMO_CLIP, messages.append)
    assert isinstance(source, FileSource) and source.path == DEMO_CLIP
    assert "Playing the bundled demo clip" in messages[0]
    # From the command line: its own sentences alone, not OpenCV's log of each backend it tried.
    result = run_live("--seconds", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines()
             if not line.startswith('{"summary"') and not LITERT_ALIGNMENT.search(line)]
    assert lines and all(line.startswith("avtca-live: ") for line in lines), lines


def stream_rounds(fifo: Path, clip: Path, rounds: int, seconds: float, pause: float) -> None:
    """A camera stream that drops out: `rounds` times, open the named pipe, stream `seconds` of the clip's frames
    as MPEG-TS in real time, and close it; `pause` seconds between rounds."""
    frames = [cv2.resize(rgb, (320, 240)) for _, rgb in iter_video_frames(clip)]
    for r in range(rounds):
        try:
            stream_once(fifo, frames, seconds)
        except BrokenPipeError:  # the camera was closed: the app stopped
            return
        if r < rounds - 1:
            time.sleep(pause)


def stream_once(fifo: Path, frames: list, seconds: float) -> None:
    """Open the named pipe (waiting for its reader), write `seconds` of frames at 25 a second, close it."""
    with open(fifo, "wb") as pipe:
        out = av.open(pipe, "w", format="mpegts")
        stream = out.add_stream("mpeg1video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(int(seconds * 25)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")):
                out.mux(packet)
            pipe.flush()
            time.sleep(0.04)
        for packet in stream.encode():
            out.mux(packet)
        out.close()


def test_camera_that_stops_is_said_and_opened_again(tmp_path):
    """A camera stream (MPEG-TS through a named pipe, in real time, 4 s a round) that stops for 3 s and comes back. The
    app says the camera delivers no frames and marks the face missing, opens it again until it does, and then
    the face is back and the fault cleared."""
    fifo = tmp_path / "camera.ts"
    os.mkfifo(fifo)
    writer = threading.Thread(target=stream_rounds, args=(fifo, shared("unlabelled_video", "single_face.mp4"), 2,
                                                          4.0, 3.0), daemon=True)
    writer.start()
    camera = CameraSource(str(fifo))
    source = DeviceSource(camera, mic_spec="no-such-microphone")
    assert any("running on video alone" in n for n in source.notes)
    session, info = open_model(DEFAULT_MODEL)
    from avtca.app.runner import Runner

    results, stopped, resumed, fault = [], None, None, None  # stopped, resumed: when the test saw the fault come, go
    with FaceDetector() as detector:  # closed here: MediaPipe's own finaliser can hang when run by the GC later
        runner = Runner(source, Engine(session, info, detector), results.append)
        runner.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and resumed is None:
            now = source.fault()
            if now and stopped is None:
                stopped, fault = time.monotonic(), now
            if stopped is not None and now is None:
                resumed = time.monotonic()  # frames again
            time.sleep(0.05)
        assert resumed is not None, f"the camera's frames did not come back (its fault: {source.fault()})"
        while time.monotonic() < deadline and not any(r.t > resumed + 1.0 for r in results):
            time.sleep(0.05)
        runner.stop()
    writer.join(timeout=10)
    assert fault == (f"camera {fifo} delivers no frames; the face is marked missing until it does (check its "
                     f"connection, or pick another with --camera)")
    assert source.fault() is None and runner.error is None
    # Ticks are stamped on the camera's clock (time.monotonic), whatever the worker's lag behind it. The test sees
    # the fault come and go late on a busy machine, never early: the stream had stopped about a second before
    # `stopped` and stays away for the 3-s pause, and it had come back before `resumed`.
    before = [r for r in results if r.t < stopped - 1.5]
    during = [r for r in results if stopped <= r.t <= stopped + 1.5]
    after = [r for r in results if r.t > resumed + 0.5]
    assert sum(r.face_present for r in before) >= 5 and during and not any(r.face_present for r in during)
    assert after and all(r.face_present for r in after)


def test_file_without_audio_track_runs_on_the_face(tmp_path):
    video_only = write_video_only(shared("crema-d", "VideoFlash", "1001_DFA_HAP_XX.flv"), tmp_path / "v.mp4")
    out = tmp_path / "v.jsonl"
    result = run_live("--fast", "--source", str(video_only), "--out", str(out))
    assert result.returncode == 0
    assert_one_clear_error(result, "has no audio track; running on the face alone")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and all(not r["voice_active"] and r["voice"] is None for r in lines)
    assert any(r["face_present"] for r in lines)


def test_file_without_video_track_runs_on_the_voice(tmp_path):
    audio_only = write_audio_only(shared("crema-d", "AudioWAV_16k", "1002_DFA_ANG_XX.wav"), tmp_path / "a.wav")
    out = tmp_path / "a.jsonl"
    result = run_live("--fast", "--source", str(audio_only), "--out", str(out))
    assert result.returncode == 0
    assert_one_clear_error(result, "has no video track; running on the voice alone")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines and not any(r["face_present"] for r in lines)
    assert any(r["voice_active"] for r in lines)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 500])
def test_unreadable_file(tmp_path, content):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    result = run_live("--fast", "--source", str(bad))
    assert result.returncode == 1
    assert_one_clear_error(result, f"media file {bad} could not be opened")


def test_missing_file(tmp_path):
    result = run_live("--fast", "--source", str(tmp_path / "nope.mp4"))
    assert result.returncode == 1
    assert_one_clear_error(result, "does not exist")
    result = run_live("--fast", "--source", str(tmp_path))
    assert result.returncode == 1
    assert_one_clear_error(result, f"media file {tmp_path} is a folder; give a video or audio file")


def test_bad_model_files(tmp_path):
    clip = str(shared("crema-d", "VideoFlash", "1001_DFA_NEU_XX.flv"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(DEFAULT_MODEL.read_bytes()[:100_000])
    for path, phrase in ((tmp_path / "missing.onnx", "does not exist"), (corrupt, "not a readable ONNX model"),
                         (tmp_path, "is a folder; pass --model PATH")):
        result = run_live("--fast", "--source", clip, "--model", str(path))
        assert result.returncode == 1
        assert_one_clear_error(result, str(path), phrase)


def test_cuda_without_cuda(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback cannot be seen here")
    clip = str(shared("crema-d", "VideoFlash", "1001_DFA_NEU_XX.flv"))
    result = run_live("--fast", "--source", clip, "--device", "cuda", "--out", str(tmp_path / "c.jsonl"))
    assert result.returncode == 0
    assert_one_clear_error(result, "no CUDAExecutionProvider", "running on the CPU instead")
    assert json.loads(result.stdout.strip().splitlines()[-1])["summary"]["provider"] == "CPUExecutionProvider"
    strict = run_live("--fast", "--source", clip, "--device", "cuda", "--strict-device")
    assert strict.returncode == 1
    assert_one_clear_error(strict, "exiting because of --strict-device")


def test_several_faces_all_boxed_largest_scored():
    """Two real faces side by side, one shrunk: both get boxes, the larger is the one cropped and scored."""
    face = cv2.cvtColor(cv2.imread(str(shared("unlabelled_video", "single_face.jpg"))), cv2.COLOR_BGR2RGB)
    small = cv2.resize(face, (face.shape[1] * 2 // 3, face.shape[0] * 2 // 3))
    canvas = np.full((face.shape[0], face.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:, :face.shape[1]] = face
    canvas[:small.shape[0], face.shape[1]:] = small
    session, info = open_model(DEFAULT_MODEL)
    from avtca.app.capture import Frame

    with FaceDetector() as detector:
        engine = Engine(session, info, detector)
        seen = engine.process_frame(Frame(0.0, canvas, 0.0))
        result = engine.tick(0.1, None)
    assert len(seen.faces) == 2
    big, little = seen.faces
    assert big.area > little.area and big.x < face.shape[1] <= little.x
    assert result.face_present and result.face is not None and len(result.faces) == 2


def test_no_portaudio_is_one_sentence(tmp_path):
    """Without the PortAudio library `import sounddevice` raises OSError; the app must say what to install.
    The library is present on this machine, so its absence is reproduced by a module that fails the same way."""
    fake = tmp_path / "sounddevice.py"
    fake.write_text("raise OSError('PortAudio library not found')\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from avtca.app.capture import DeviceError, list_microphones
        try:
            list_microphones()
        except DeviceError as e:
            print(e)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "no PortAudio library" in result.stdout and "apt-get install libportaudio2" in result.stdout


@pytest.mark.parametrize("command, args, says", [
    ("live", ["--headless", "--tick-hz", "0"], "argument --tick-hz: '0' is not a number above 0 and at most 100"),
    ("live", ["--headless", "--seconds", "-1"], "argument --seconds: '-1' is not a number above 0"),
    ("live", ["--headless", "--smooth", "nan"], "argument --smooth: 'nan' is not a number at least 0"),
    ("live", ["--headless", "--out", "{tmp}"], "argument --out: {tmp} is a folder; give a file name in it"),
    ("train", ["--stage", "voice", "--out", "{tmp}/run", "--epochs", "0"],
     "argument --epochs: '0' is not a whole number at least 1"),
    ("train", ["--stage", "voice", "--out", "{tmp}/run", "--fold", "5/5"],
     "argument --fold: '5/5' is not K/N with 0 <= K < N and N >= 2, e.g. 0/5"),
    ("train", ["--stage", "voice", "--out", "{tmp}/run", "--milestones", "40,x"],
     "argument --milestones: '40,x' is not a comma-separated list of epochs, e.g. 40,55,65"),
    ("train", ["--stage", "voice", "--out", "{tmp}/run", "--ferplus-weight", "1.5"],
     "argument --ferplus-weight: '1.5' is not a number from 0 to 1"),
    ("train", ["--stage", "voice", "--out", "{tmp}/file"], "argument --out: {tmp}/file is a file; give a folder"),
    ("eval", ["--dataset", "crema-d", "--root", "{tmp}", "--json", "{tmp}/file/r.json"],
     "argument --json: {tmp}/file is a file, so {tmp}/file/r.json cannot be written below it"),
    ("export", ["--init", "live", "-o", "{tmp}"], "argument -o/--output: {tmp} is a folder; give a file name in it"),
    ("export", ["--init", "live", "-o", "{tmp}/m.onnx", "--eval-json", "{tmp}/file"],
     "argument --eval-json: {tmp}/file is not a readable JSON file (Expecting value"),
])
def test_arguments_out_of_range_are_refused_before_anything_starts(command, args, says, tmp_path, capsys):
    from avtca.app import live
    from avtca.model import evaluate, export, train

    (tmp_path / "file").write_text("not a folder")
    main = {"live": live.main, "train": train.main, "eval": evaluate.main, "export": export.main}[command]
    with pytest.raises(SystemExit) as e:
        main([a.format(tmp=tmp_path) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert says.format(tmp=tmp_path) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing was written


def test_native_chatter_is_held_back_and_other_lines_written_out(capfd):
    """What MediaPipe's runtime writes to file descriptor 2 while a detector starts is dropped; anything else
    written there meanwhile comes out afterwards."""
    import os

    from avtca.app.faces import quiet_native_stderr

    with quiet_native_stderr():
        os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment with options\n")
        os.write(2, b"W0000 00:00:1796626302.293502   23331 inference_runner_litert.cc:1433] Input tensor memory\n")
        os.write(2, b"E0000 something failed\n")
        os.write(2, b"a warning from elsewhere\n")
    assert capfd.readouterr().err.splitlines() == ["E0000 something failed", "a warning from elsewhere"]


def test_out_file_that_cannot_be_written_is_said_before_the_devices_open():
    result = run_live("--source", str(DEMO_CLIP), "--fast", "--out", "/proc/avtca/run.jsonl")
    assert result.returncode == 1
    assert_one_clear_error(result, "avtca-live: cannot write predictions to /proc/avtca/run.jsonl (")
    assert "model " not in result.stderr  # nothing was opened first
