"""avtca-bench: how fast the model and the live pipeline are, against PyTorch and against real time.

Prints a table and writes JSON whose keys name what was measured, e.g. `live.ort_fp32.batch1.median_ms`,
`live.torch.batch1.median_ms`, `live.tick.median_ms`, `pipeline.fast.demo.fps`. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..app.cli import POSITIVE_INT, json_file, output_file
from ..app.modelfile import ModelFileError, open_parts, read_model_info, session_options
from ..app.paths import DEFAULT_MODEL, DEMO_CLIP
from .card import cpu_name
from .config import preset
from .export import Head, example_inputs, export
from .network import AVTCA, count_parameters

REPO = Path(__file__).resolve().parents[1]
PIPELINE_CLIP = REPO.parent / "shared" / "data" / "unlabelled_video" / "WolfgangLanger_Pexels.mp4"


def stats(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1000
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "runs": len(ms)}


def time_calls(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return stats(out)


def time_interleaved(fns: dict, runs: int, warmup: int, block: int = 20) -> dict:
    """Times several callables in alternating blocks of `block` runs until each has `runs`: a shared machine's
    speed drifts over minutes, and a comparison of two runtimes should not depend on which ran first. Each block
    starts with two untimed calls (the other runtime's threads may still be spinning)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    while any(len(t) < runs for t in times.values()):
        for name, fn in fns.items():
            for _ in range(2):
                fn()
            for _ in range(min(block, runs - len(times[name]))):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: stats(t) for name, t in times.items()}


def gflops(model: AVTCA, batch: int = 1) -> float:
    """Floating-point operations of one forward pass (multiply and add counted apart), in GFLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*example_inputs(model, batch))
    return counter.get_total_flops() / 1e9


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def bench_model(name: str, threads: int, runs: int, int8: bool, out: dict, log, all_cores: int = 0) -> None:
    torch.manual_seed(0)
    model = AVTCA(preset(name)).eval()
    torch.set_num_threads(threads)
    out[f"{name}.params"] = count_parameters(model)
    out[f"{name}.gflops"] = round(gflops(model), 3)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / f"{name}.onnx"
        export(model, fp32, training=None)
        files = {"ort_fp32": fp32}
        if int8:
            files["ort_int8"] = Path(tmp) / f"{name}.int8.onnx"
            export(model, files["ort_int8"], training=None, int8=True)
        sessions = {k: ort_session(p, threads) for k, p in files.items()}
        for batch in (1, 3):
            audio, faces, presence = example_inputs(model, batch)
            feeds = {"audio": audio.numpy(), "faces": faces.numpy(), "presence": presence.numpy()}
            fns = {"torch": lambda: model(audio, faces, presence)}
            fns.update({kind: (lambda s=session: s.run(None, feeds)) for kind, session in sessions.items()})
            with torch.no_grad():
                for kind, figures in time_interleaved(fns, runs, 5).items():
                    out.update(_flat(f"{name}.{kind}.batch{batch}", figures))
            _ratios(out, name, f"batch{batch}")
            log(f"{name} batch {batch}: torch {out[f'{name}.torch.batch{batch}.median_ms']:.2f} ms, ORT fp32 "
                f"{out[f'{name}.ort_fp32.batch{batch}.median_ms']:.2f} ms"
                + (f", ORT int8 {out[f'{name}.ort_int8.batch{batch}.median_ms']:.2f} ms" if int8 else ""))
        if all_cores > threads:
            # Batch 1 again with every core for both runtimes, as offline use of the model would run it.
            torch.set_num_threads(all_cores)
            session = ort_session(fp32, all_cores)
            audio, faces, presence = example_inputs(model, 1)
            feeds = {"audio": audio.numpy(), "faces": faces.numpy(), "presence": presence.numpy()}
            tag = f"threads{all_cores}"
            with torch.no_grad():
                timed = time_interleaved({"torch": lambda: model(audio, faces, presence),
                                          "ort_fp32": lambda: session.run(None, feeds)}, runs, 5)
            for kind, figures in timed.items():
                out.update(_flat(f"{name}.{kind}.batch1.{tag}", figures))
            _ratios(out, name, f"batch1.{tag}")
            torch.set_num_threads(threads)
            log(f"{name} batch 1, {all_cores} threads: torch {out[f'{name}.torch.batch1.{tag}.median_ms']:.2f} ms, "
                f"ORT fp32 {out[f'{name}.ort_fp32.batch1.{tag}.median_ms']:.2f} ms")
        if name == "live":
            bench_tick(model, fp32, threads, runs, out, log)


def _ratios(out: dict, name: str, tag: str) -> None:
    """ORT time over PyTorch time, and its inverse (how many times faster ORT is), for one measured case."""
    ort_ms, torch_ms = out[f"{name}.ort_fp32.{tag}.median_ms"], out[f"{name}.torch.{tag}.median_ms"]
    out[f"{name}.ratio_ort_fp32_to_torch.{tag}"] = round(ort_ms / torch_ms, 3)
    out[f"{name}.speedup_ort_fp32_over_torch.{tag}"] = round(torch_ms / ort_ms, 2)


def bench_tick(model: AVTCA, fp32: Path, threads: int, runs: int, out: dict, log) -> None:
    """What the app pays: per tick the audio features once and the head on the batch of 3; per new face crop
    the encoder once."""
    parts, why_not = open_parts(fp32, read_model_info(fp32), threads=threads)
    if parts is None:
        raise RuntimeError(f"the live preset's export has no parts to time: {why_not}")
    frames, audio_features, head = parts
    audio, faces, presence = example_inputs(model, 3)
    with torch.no_grad():
        emb = model.encode_frames(faces).numpy()
    pcm, presence_np = audio[:1].numpy(), presence.numpy()

    def tick():
        feats = audio_features.run(None, {"audio": pcm})[0]
        return head.run(None, {"audio_features": np.repeat(feats, 3, 0), "frame_embeddings": emb,
                               "presence": presence_np})

    crop = faces[:1, 0].numpy()
    out.update(_flat("live.tick", time_calls(tick, runs, 5)))
    out.update(_flat("live.tick_audio_features", time_calls(lambda: audio_features.run(None, {"audio": pcm}), runs, 5)))
    out.update(_flat("live.frame_encode", time_calls(lambda: frames.run(None, {"crops": crop}), runs, 5)))
    head_torch, emb_torch = Head(model), torch.from_numpy(emb)
    with torch.no_grad():
        def torch_tick():
            return head_torch(model.audio_frontend(audio[:1]).expand(3, -1, -1), emb_torch, presence)

        out.update(_flat("live.torch_tick", time_calls(torch_tick, runs, 5)))
    log(f"live tick (audio features once, head on the batch of 3): {out['live.tick.median_ms']:.2f} ms median; "
        f"per new face crop {out['live.frame_encode.median_ms']:.2f} ms")


def bench_model_encoder(model_path: Path, threads: int, runs: int, out: dict, log) -> None:
    """The per-crop cost of the model the app runs (`--model`): its face encoder part, as exported (its own face CNN,
    with its flip averaging when it has it), on one crop of its input size."""
    parts, why_not = open_parts(model_path, read_model_info(model_path), threads=threads)
    if parts is None:
        log(f"model per new face crop: skipped, {why_not}")
        return
    session = parts[0]
    shape = [1, *session.get_inputs()[0].shape[1:]]
    crop = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out["model.path"] = str(model_path)
    out.update(_flat("model.frame_encode", time_calls(lambda: session.run(None, {"crops": crop}), runs, 5)))
    log(f"{model_path.name} per new face crop: {out['model.frame_encode.median_ms']:.2f} ms median")


def bench_pipeline(model_path: Path, clip: Path, label: str, realtime_seconds: float, out: dict, log) -> None:
    """The headless pipeline on a file: --fast throughput, then real time for a while."""
    from ..app.live import build, parser

    for mode in ("fast", "realtime"):
        argv = ["--source", str(clip), "--model", str(model_path), "--headless"] + (["--fast"] if mode == "fast" else [])
        runner, _, _ = build(parser().parse_args(argv))
        runner.start()
        deadline = time.monotonic() + (realtime_seconds if mode == "realtime" else 3600)
        while not runner.done.wait(0.1):
            if time.monotonic() > deadline:
                break
        runner.stop()
        runner.engine.detector.close()
        s = runner.summary()
        key = f"pipeline.{mode}.{label}"
        wall = s["wall_seconds"]
        if mode == "fast":
            out[f"{key}.fps"] = round(s["frames_processed"] / wall, 1)
            out[f"{key}.media_seconds_per_wall_second"] = round(s.get("media_seconds", 0) / wall, 2)
            for stage, v in s["latency_ms"].items():  # each tick's sum over the frames since the last tick
                if stage != "capture_to_result":
                    out[f"{key}.per_tick.{stage}.median_ms"] = v["median"]
            out[f"{key}.cpu_seconds_per_media_second"] = s.get("cpu_seconds_per_media_second")
            log(f"pipeline --fast on {clip.name}: {out[f'{key}.fps']} frames/s "
                f"({out[f'{key}.media_seconds_per_wall_second']}x real time)")
        else:
            lat = s["latency_ms"].get("capture_to_result", {"median": None, "p95": None})
            out[f"{key}.capture_to_result.p50_ms"] = lat["median"]
            out[f"{key}.capture_to_result.p95_ms"] = lat["p95"]
            out[f"{key}.cpu_seconds_per_second"] = round(s["cpu_seconds"] / wall, 3)
            out[f"{key}.frames_dropped"] = s["frames_dropped"]
            log(f"pipeline real time on {clip.name}: capture-to-result p50 {lat['median']} ms, p95 {lat['p95']} ms, "
                f"{out[f'{key}.cpu_seconds_per_second']} CPU s per s")


def bench_training(name: str, steps: int, batch: int, out: dict, log, device: str = "cpu") -> None:
    """Clips per second of full training steps (forward, backward, update) at the given batch."""
    from .stages import FullModel

    torch.manual_seed(0)
    model = AVTCA(preset(name)).to(device).train()
    module = FullModel(model)
    opt = torch.optim.AdamW(module.parameters(), 1e-3)
    audio, faces, presence = (t.to(device) for t in example_inputs(model, batch))
    pixels = faces.permute(0, 1, 4, 2, 3).float()
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def step():
        loss = torch.nn.functional.cross_entropy(module(audio, pixels, presence), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    s = time_calls(step, steps, 1)
    out[f"{name}.train.{device}.clips_per_second"] = round(batch / (s["median_ms"] / 1000), 2)
    out[f"{name}.train.{device}.batch"] = batch
    log(f"{name} training on {device}: {out[f'{name}.train.{device}.clips_per_second']} clips/s (batch {batch})")


def bench_face_training(steps: int, out: dict, log) -> None:
    """Images per second of the face stage (the per-frame CNN on single 48x48 images, batch 128, channels-last,
    as `avtca-train --stage face` runs it), fp32 and bf16 autocast, for the live preset's fused inverted residual
    units and for the same widths with depthwise units (the paper's kind)."""
    from .stages import FACE_BATCH, FrameClassifier
    from .trainer import native_bf16

    bf16 = native_bf16("cpu")
    for variant, fused in (("live", True), ("live_depthwise", False)):
        torch.manual_seed(0)
        module = FrameClassifier(AVTCA(preset("live", video_fused=fused))).to(memory_format=torch.channels_last)
        module.train()
        opt = torch.optim.AdamW(module.parameters(), 1e-3)
        pixels = (torch.rand(FACE_BATCH, 1, 48, 48) * 255).contiguous(memory_format=torch.channels_last)
        y = torch.zeros(FACE_BATCH, dtype=torch.long)
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            def step():
                with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                    logits = module(pixels)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            s = time_calls(step, steps, 1)
            key = f"{variant}.train_face.cpu.{precision}.images_per_second"
            out[key] = round(FACE_BATCH / (s["median_ms"] / 1000), 1)
            log(f"{variant} face stage on cpu, {precision}: {out[key]} images/s (batch {FACE_BATCH})")


def bench_face_stage(device: str, steps: int, out: dict, log) -> None:
    """The face stage's training step as `avtca-train --stage face --device DEVICE --bf16` runs it (forward,
    backward, clipping, update, the loss read back), images per second with the batch made once (the step alone),
    with each batch drawn and augmented on the CPU, and with it augmented on the device; and the largest pixel
    difference between one batch augmented on the CPU and on the device (the random draws are shared)."""
    from .stages import FACE_BATCH, FaceData, FrameClassifier, face_batches, face_loss

    n = 28709  # FER2013 Training's size, random pixels
    rng = np.random.default_rng(0)
    data = FaceData(rng.integers(0, 256, (n, 48, 48, 1), dtype=np.uint8), rng.integers(0, 7, n),
                    np.zeros((0, 48, 48, 1), np.uint8), np.zeros(0, np.int64))
    torch.manual_seed(0)
    module = FrameClassifier(AVTCA(preset("live"))).to(device).to(memory_format=torch.channels_last).train()
    params = list(module.parameters())
    opt = torch.optim.AdamW(params, 1e-3)
    fixed = next(face_batches(data, 0, 0, device=device))  # the step-only batch, and the device's augmentation
    on_cpu = next(face_batches(data, 0, 0, device="cpu"))[0]
    key = f"live.face_stage.{device}"
    out[f"{key}.augment_max_abs_difference"] = float((on_cpu - fixed[0].cpu()).abs().max())
    variants = [("step_only", None), ("augment_on_cpu", "cpu")] + ([] if device == "cpu" else [
        (f"augment_on_{device}", device)])
    for variant, where in variants:
        batches = face_batches(data, 1, 0, device=where) if where else None

        def step():
            x, y, _ = next(batches) if batches else fixed
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                loss, _, _ = face_loss(module, (x, y, None))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            float(loss.detach())  # the training loop reads the loss back every step

        s = time_calls(step, min(steps, n // FACE_BATCH - 5), 5)
        out[f"{key}.{variant}.images_per_second"] = round(FACE_BATCH / (s["median_ms"] / 1000), 1)
        log(f"face stage on {device}, {variant}: {out[f'{key}.{variant}.images_per_second']} images/s "
            f"({s['median_ms']:.2f} ms a step of {FACE_BATCH})")
    log(f"face stage on {device}: augmentation on the CPU and on the device differ by at most "
        f"{out[f'{key}.augment_max_abs_difference']:.2e} in 0-255 pixels")


def environment(threads: int) -> dict:
    import onnxruntime as ort

    return {"env.cpu": cpu_name(), "env.cpu_count": os.cpu_count(), "env.threads": threads,
            "env.python": sys.version.split()[0], "env.torch": torch.__version__, "env.onnxruntime": ort.__version__,
            "env.numpy": np.__version__,
            "env.provider": "CPUExecutionProvider", "env.cuda": torch.cuda.is_available()}


MARKDOWN_ROWS = [
    ("live preset: parameters / GFLOPs", "live.params", "live.gflops"),
    ("paper preset: parameters / GFLOPs", "paper.params", "paper.gflops"),
    ("live batch 1: PyTorch eager / ORT fp32 / ORT int8 (median ms)", "live.torch.batch1.median_ms",
     "live.ort_fp32.batch1.median_ms", "live.ort_int8.batch1.median_ms"),
    ("live batch 3: PyTorch eager / ORT fp32 / ORT int8 (median ms)", "live.torch.batch3.median_ms",
     "live.ort_fp32.batch3.median_ms", "live.ort_int8.batch3.median_ms"),
    ("live batch 1 p95: PyTorch / ORT fp32 (ms)", "live.torch.batch1.p95_ms", "live.ort_fp32.batch1.p95_ms"),
    ("live ORT fp32 / PyTorch, batch 1 and 3", "live.ratio_ort_fp32_to_torch.batch1",
     "live.ratio_ort_fp32_to_torch.batch3"),
    ("live per tick (audio features once + head on the batch of 3, median / p95 ms)", "live.tick.median_ms",
     "live.tick.p95_ms"),
    ("live per new face crop (encoder, median ms)", "live.frame_encode.median_ms"),
    ("--model per new face crop (its encoder, flip averaging included, median ms)",
     "model.frame_encode.median_ms"),
    ("paper batch 1: PyTorch eager / ORT fp32 / ORT int8 (median ms)", "paper.torch.batch1.median_ms",
     "paper.ort_fp32.batch1.median_ms", "paper.ort_int8.batch1.median_ms"),
    ("paper batch 3: PyTorch eager / ORT fp32 / ORT int8 (median ms)", "paper.torch.batch3.median_ms",
     "paper.ort_fp32.batch3.median_ms", "paper.ort_int8.batch3.median_ms"),
    ("paper batch 1: ORT fp32 speed-up over PyTorch eager (x)", "paper.speedup_ort_fp32_over_torch.batch1"),
    ("paper batch 1, all cores: PyTorch eager / ORT fp32 (median ms), speed-up (x)",
     "paper.torch.batch1.threads{cores}.median_ms", "paper.ort_fp32.batch1.threads{cores}.median_ms",
     "paper.speedup_ort_fp32_over_torch.batch1.threads{cores}"),
    ("pipeline --fast, demo clip 480x360: frames/s, x real time", "pipeline.fast.demo.fps",
     "pipeline.fast.demo.media_seconds_per_wall_second"),
    ("pipeline --fast, 640x360 face video: frames/s, x real time", "pipeline.fast.face640x360.fps",
     "pipeline.fast.face640x360.media_seconds_per_wall_second"),
    ("pipeline --fast, 640x360, per tick medians ms: decode / detect / crop / encode / inference",
     "pipeline.fast.face640x360.per_tick.decode.median_ms", "pipeline.fast.face640x360.per_tick.detect.median_ms",
     "pipeline.fast.face640x360.per_tick.crop.median_ms", "pipeline.fast.face640x360.per_tick.encode.median_ms",
     "pipeline.fast.face640x360.per_tick.inference.median_ms"),
    ("real time, 640x360: capture-to-result p50 / p95 ms", "pipeline.realtime.face640x360.capture_to_result.p50_ms",
     "pipeline.realtime.face640x360.capture_to_result.p95_ms"),
    ("real time, 640x360: CPU seconds per second", "pipeline.realtime.face640x360.cpu_seconds_per_second"),
    ("real time, demo clip: capture-to-result p50 / p95 ms, CPU s per s",
     "pipeline.realtime.demo.capture_to_result.p50_ms", "pipeline.realtime.demo.capture_to_result.p95_ms",
     "pipeline.realtime.demo.cpu_seconds_per_second"),
    ("training on CPU, clips/s: live (batch 32) / paper (batch 4)", "live.train.cpu.clips_per_second",
     "paper.train.cpu.clips_per_second"),
    ("face stage on CPU, images/s, fp32 / bf16: live (fused units)", "live.train_face.cpu.fp32.images_per_second",
     "live.train_face.cpu.bf16.images_per_second"),
    ("face stage on CPU, images/s, fp32 / bf16: same widths, depthwise units",
     "live_depthwise.train_face.cpu.fp32.images_per_second", "live_depthwise.train_face.cpu.bf16.images_per_second"),
]


def markdown(figures: dict) -> str:
    """The README's performance table from a saved JSON (so no figure is typed by hand)."""
    env = (f"{figures.get('env.cpu')}, {figures.get('env.cpu_count')} cores, {figures.get('env.threads')} thread(s), "
           f"onnxruntime {figures.get('env.onnxruntime')}, torch {figures.get('env.torch')}, "
           f"{figures.get('env.provider')}")
    model = figures.get("model.path")
    if model and Path(model).is_relative_to(REPO):
        model = Path(model).relative_to(REPO).as_posix()
    lines = [f"Machine: {env}." + (f" `--model` (pipeline rows too): `{model}`." if model else ""), "",
             "| measure | figure |", "|---|---|"]
    for title, *keys in MARKDOWN_ROWS:
        values = [figures.get(k.format(cores=figures.get("env.cpu_count"))) for k in keys]
        if all(v is None for v in values):
            continue
        shown = " / ".join("n/a" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:g}" for v in values)
        lines.append(f"| {title} | {shown} |")
    return "\n".join(lines)


def _flat(prefix: str, d: dict) -> dict:
    return {f"{prefix}.{k}": v for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avtca-bench", description=__doc__.splitlines()[0])
    p.add_argument("--json", type=output_file, help="write the figures here")
    p.add_argument("--quick", action="store_true", help="live preset only, few runs, no pipeline (a smoke test)")
    p.add_argument("--threads", type=POSITIVE_INT, default=1, help="threads for both runtimes (the app uses 1)")
    p.add_argument("--runs", type=POSITIVE_INT, default=200)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model the pipeline benchmark runs")
    p.add_argument("--clip", type=Path, default=PIPELINE_CLIP, help="a 640x360 face video for the pipeline")
    p.add_argument("--markdown", type=json_file, metavar="JSON",
                   help="print the README table for a JSON written earlier, and exit")
    p.add_argument("--face-stage", choices=["cpu", "cuda"],
                   help="time only the face stage's training step on this device (augmenting on the CPU and there; "
                        "--threads CPU threads)")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return 0
    if not args.face_stage:
        try:  # before minutes of other benchmarks
            read_model_info(args.model)
        except ModelFileError as e:
            print(f"avtca-bench: {e}", file=sys.stderr)
            return 1
    if args.face_stage == "cuda" and not torch.cuda.is_available():
        print("avtca-bench: --face-stage cuda asked for, but this torch sees no CUDA device; use --face-stage cpu",
              file=sys.stderr)
        return 2
    out: dict = {}
    try:
        measure(args, out, lambda msg: print(msg, flush=True))
    except KeyboardInterrupt:
        if out:
            report(out, None)
        print(f"avtca-bench: stopped; {'the figures above were measured before that, and ' if out else ''}"
              f"nothing was written", file=sys.stderr)
        return 130
    return report(out, args.json)


def measure(args, out: dict, log) -> None:
    """Fill `out` with the figures the command line asks for, each as soon as it is measured."""
    if args.face_stage:
        torch.set_num_threads(args.threads)
        out.update({"threads": args.threads, "torch": torch.__version__, "cpu": cpu_name(),
                    "gpu": torch.cuda.get_device_name() if args.face_stage == "cuda" else None})
        bench_face_stage(args.face_stage, 5 if args.quick else 100, out, log)
        return
    runs = 20 if args.quick else max(args.runs, 200)
    out.update(environment(args.threads))
    bench_model("live", args.threads, runs, int8=not args.quick, out=out, log=log)
    bench_model_encoder(args.model, args.threads, runs, out, log)
    if not args.quick:
        bench_model("paper", args.threads, runs, int8=True, out=out, log=log, all_cores=os.cpu_count() or 1)
        for clip, label in ((DEMO_CLIP, "demo"), (args.clip, "face640x360")):
            if clip.is_file():
                bench_pipeline(args.model, clip, label, 10.0, out, log)
            else:
                log(f"pipeline on {label}: skipped, {clip} is not here")
        bench_training("live", 5, 32, out, log)
        bench_training("paper", 2, 4, out, log)
        bench_face_training(5, out, log)
        if torch.cuda.is_available():
            bench_training("live", 10, 32, out, log, "cuda")
            bench_training("paper", 10, 8, out, log, "cuda")


def report(out: dict, json_path: Path | None) -> int:
    """Print the figures, one per line, and write them to `json_path` when given."""
    width = max(len(k) for k in out)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in out.items()))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
