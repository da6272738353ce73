"""avtca-live: emotion from face and voice, live from a camera and microphone or from a media file.

Opens a window by default; --headless runs the same pipeline without Qt and writes one JSON line per tick.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .capture import DeviceError, camera_names, list_microphones, open_source
from .cli import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, number, output_file
from .faces import FaceDetector, FaceDetectorError
from .media import MediaError
from .modelfile import ModelFileError, open_model, open_parts, providers_for, training_gap
from .paths import DEFAULT_MODEL, DEMO_CLIP
from .pipeline import TICK_HZ, Engine
from .runner import JsonlWriter, Runner


def say(msg: str) -> None:
    print(f"avtca-live: {msg}", file=sys.stderr, flush=True)


def choose_providers(device: str, strict: bool) -> list[str]:
    """Execution providers for --device; says so when CUDA is asked for but absent."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return providers_for("cuda")
    if device == "cuda":
        message = ("--device cuda asked for, but this ONNX Runtime has no CUDAExecutionProvider (install "
                   "onnxruntime-gpu in place of onnxruntime, see README)")
        if strict:
            raise DeviceError(message + "; exiting because of --strict-device")
        say(message + "; running on the CPU instead")
    return providers_for("cpu")


def list_devices() -> int:
    cams = camera_names()
    print("cameras:" if cams else "cameras: none found")
    for index, name in cams.items():
        print(f"  {index}: {name}")
    try:
        mics = list_microphones()
        print("microphones:" if mics else "microphones: none found")
        for index, name, rate in mics:
            print(f"  {index}: {name} ({rate:.0f} Hz)")
    except DeviceError as e:
        print(f"microphones: unavailable ({e})")
    return 0


def build(args) -> tuple[Runner, object, object]:
    """(runner, model info, session) for the command line; raises the expected errors with their message."""
    providers = choose_providers(args.device, args.strict_device)
    session, info = open_model(args.model, providers, threads=args.threads)
    provider = session.get_providers()[0]
    if not info.trained:
        say(f"{args.model} is an UNTRAINED model: its probabilities mean nothing yet")
    elif gap := training_gap(info.metadata):
        say(f"{args.model} {gap}")
    source = open_source(args.source, args.camera, args.mic, info.sample_rate_hz, args.fast, DEMO_CLIP, say)
    try:
        detector = FaceDetector(video_mode=True)
    except FaceDetectorError:
        source.stop()  # release the camera and microphone before saying why
        raise
    for note in getattr(source, "notes", []):
        say(note)
    parts, why_not = (None, "--full-model") if args.full_model else open_parts(args.model, info, providers, args.threads)
    if parts is None and not args.full_model:
        say(f"running the full model every tick ({why_not})")
    engine = Engine(session, info, detector, smooth_seconds=args.smooth, parts=parts)
    return Runner(source, engine, lambda r: None, tick_hz=args.tick_hz), info, provider


def run_headless(args) -> int:
    writer = JsonlWriter(args.out) if args.out else None  # before the devices open: a bad path costs nothing
    try:
        runner, info, provider = build(args)
    except BaseException:
        if writer:
            writer.close()
        raise
    say(f"model {args.model} ({info.preset}, {len(info.labels)} labels) on {provider}; "
        f"{'fast' if args.fast else 'real time'}, {args.tick_hz:g} Hz ticks")
    runner.on_result = writer if writer else (lambda r: print(json.dumps(r.record()), flush=True))
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: (interrupted.set(), runner.stop_event.set()))
    try:
        runner.start()
        reported = None
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while not runner.done.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
            fault = runner.source.fault()
            if fault != reported:  # say each fault once; the pipeline goes on with what is left
                if fault:
                    say(fault)
                reported = fault
        if runner.source.fault() and runner.source.fault() != reported:
            say(runner.source.fault())
        if runner.error:
            say(runner.error)
    finally:
        runner.stop()
        signal.signal(signal.SIGINT, previous)
        if writer:
            writer.close()
        runner.engine.detector.close()
    summary = runner.summary()
    summary["provider"] = provider
    print(json.dumps({"summary": summary}), file=sys.stderr if not args.out else sys.stdout, flush=True)
    return 130 if interrupted.is_set() else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avtca-live", description=__doc__.splitlines()[0])
    p.add_argument("--camera", help="camera index, (part of) its name, or a device path (default 0); 'none': "
                                    "the microphone alone")
    p.add_argument("--mic", help="microphone index or (part of) its name (default: the system's)")
    p.add_argument("--source", help="play this video/audio file instead of the devices")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported .onnx (default: the shipped model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--strict-device", action="store_true", help="exit instead of falling back to the CPU")
    p.add_argument("--headless", action="store_true", help="no window: JSON lines to --out (or stdout)")
    p.add_argument("--fast", action="store_true", help="with --source: as fast as possible, not real time")
    p.add_argument("--out", type=output_file, help="write one JSON line per tick here")
    p.add_argument("--smooth", type=NON_NEGATIVE, default=0.5, help="smoothing time constant in seconds (0: off)")
    p.add_argument("--tick-hz", type=number(float, above=0, at_most=100), default=TICK_HZ, help="inference rate")
    p.add_argument("--seconds", type=POSITIVE, help="stop after this many seconds (headless)")
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=1,
                   help="ONNX Runtime threads (1 keeps one core free; 0: ONNX Runtime's default)")
    p.add_argument("--full-model", action="store_true",
                   help="run the whole model every tick, not its per-frame encoder, audio front end and head apart")
    p.add_argument("--list-devices", action="store_true", help="list cameras and microphones, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list_devices:
        return list_devices()
    if args.fast and not args.source:
        say("--fast needs --source FILE (a camera cannot run faster than real time)")
        return 2
    no_display = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM"))
    if not args.headless and no_display:
        say("no display found (DISPLAY is unset); running headless. Pass --headless to say so yourself.")
        args.headless = True
    try:
        if args.headless:
            return run_headless(args)
        from .window import run_window

        return run_window(args, build)
    except (ModelFileError, DeviceError, MediaError, FaceDetectorError) as e:
        say(str(e))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
