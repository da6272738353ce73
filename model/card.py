"""Write exported/MODEL_CARD.md from the model's own metadata and the JSON files avtca-eval wrote.

python -m avtca.model.card --model exported/avtca.onnx --eval-dir exported/eval --runs runs/live -o exported/MODEL_CARD.md
Every figure in the card is read from those files; none is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from ..app.cli import output_file
from ..app.modelfile import ModelFileError, read_model_info

# (eval JSON file, what it measures, the avtca-eval command that wrote it; DATA is the data folder)
EVALS = [
    ("fer2013_publictest.json", "face only: FER2013 PublicTest, exact duplicates of training images removed",
     "avtca-eval --dataset fer2013 --root DATA/fer2013 --split test --ferplus DATA/ferplus"),
    ("ravdess_17-20.json", "voice only: RAVDESS speech, actors 17-20 (not trained on; they chose the epoch)",
     "avtca-eval --dataset ravdess --root DATA/ravdess/Audio_Speech_16k_Actors_01-20 --actors 17-20"),
    ("paired.json", "face + voice pairs: each RAVDESS 17-20 clip with a PublicTest face of its label (seed 2024)",
     "avtca-eval --dataset paired --face-root DATA/fer2013 --voice-root DATA/ravdess/Audio_Speech_16k_Actors_01-20 "
     "--actors 17-20"),
    ("cremad_audio.json", "voice only: CREMA-D actors 1001-1002 (12 clips, another corpus)",
     "avtca-eval --dataset crema-d --root DATA/crema-d/AudioWAV_16k"),
    ("cremad_av.json", "genuine audio-video: CREMA-D actor 1001 (6 clips)",
     "avtca-eval --dataset crema-d --av --root DATA/crema-d/VideoFlash --per-item"),
    ("ravdess_av.json", "genuine audio-video: RAVDESS actor 01 (1 clip)",
     "avtca-eval --dataset ravdess --av --root DATA/ravdess/Actor_01_av --per-item"),
]


def _row(name: str, r: dict) -> str:
    return f"| {name} | {r['accuracy']:.1%} | {r['macro_f1']:.3f} | {r['uar']:.1%} | {r['n']} |"


def evaluation_section(eval_dir: Path) -> tuple[str, dict]:
    lines, found = [], {}
    for file, what, command in EVALS:
        path = eval_dir / file
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        found[file] = r
        lines += [f"### {what}", "", f"`{command} --json {path.as_posix()}`", "",
                  "| input | accuracy | macro-F1 | UAR | n |", "|---|---|---|---|---|"]
        modes = [m for m in ("fused", "face_only", "voice_only") if m in r]
        for m in modes or [None]:
            lines.append(_row(m.replace("_", " ") if m else "as above", r[m] if m else r))
        crowd = r.get("ferplus_majority")
        if crowd:
            lines.append(_row("against the FER+ crowd's majority", crowd))
        notes = r.get("notes", {})
        removed = notes.get("duplicates_of_training_removed", notes.get("face_duplicates_of_training_removed"))
        if removed:
            lines.append(f"\n{removed} PublicTest images that are exact pixel copies of training images were removed "
                         f"before {'pairing' if modes else 'scoring'}.")
            dups = r.get("duplicates_of_training")
            if dups:
                lines[-1] += (f" Scored with them, as published FER2013 figures usually are: "
                              f"{dups['accuracy_with_them']:.1%} (n={dups['n_with_them']}; "
                              f"{dups['accuracy_on_them']:.1%} on the copies alone).")
        if crowd:
            lines.append(f"\nThe FER+ crowd's majority (10 votes an image; images with one among the labels, "
                         f"n={crowd['n']}) agrees with FER2013's own label on {crowd['crowd_agrees_with_fer2013']:.1%} "
                         f"of them.")
        items = notes.get("items")
        if items and len(items) <= 12 and modes:
            lines += ["", "| file | label | fused | face only | voice only |", "|---|---|---|---|---|"]
            for it in items:
                lines.append(f"| {it['file']} | {it['label']} | {it['predicted']} ({it['confidence']:.2f}) | "
                             f"{it.get('face_only_predicted', '-')} | {it.get('voice_only_predicted', '-')} |")
        elif items and len(items) <= 12:
            lines += ["", "| file | label | predicted |", "|---|---|---|"]
            for it in items:
                lines.append(f"| {it['file']} | {it['label']} | {it['predicted']} ({it['confidence']:.2f}) |")
        lines.append("")
    return "\n".join(lines), found


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine(device: str = "cpu") -> str:
    """What a stage trained on, for its record: the GPU's name, or the CPU's with its cores and the vector
    instructions PyTorch uses there (AVX2, AVX512; bf16 trains fast only with AVX512 or AMX)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


def option_value(command: str, option: str) -> str | None:
    """The value a recorded command gave `option` (`--out DIR` or `--out=DIR`); the last one, as argparse takes it."""
    words, value = command.split(), None
    for word, following in zip(words, [*words[1:], None]):
        if word == option and following is not None:
            value = following
        elif word.startswith(option + "="):
            value = word.split("=", 1)[1]
    return value


def stage_folder(command: str, runs: Path | None) -> Path:
    """Where a stage's run folder is: its command's --out, as written (relative to where the card is made); with
    --runs, that folder's name under runs when the command's own folder has gone (runs moved or copied)."""
    out = Path(option_value(command, "--out") or ".")
    if runs is not None and not (out / "history.json").is_file():
        return runs / out.name
    return out


def stage_history(stage: dict, runs: Path | None, shipped: Path | None) -> Path | None:
    """A stage's history.json: in its run folder (`stage_folder`), else the copy shipped beside the evaluations
    (`shipped`/<stage>_history.json, which make model-export writes), so a card made without the run folders
    still times the training; None when neither exists."""
    found = stage_folder(stage["command"], runs) / "history.json"
    if not found.is_file() and shipped is not None:
        found = shipped / f"{stage['stage']}_history.json"
    return found if found.is_file() else None


def on_gpu(command: str) -> bool:
    """Whether a stage's command trained on a GPU (`--device cuda`)."""
    return option_value(command, "--device") == "cuda"


def face_args(command: str) -> str:
    """The options of a face stage's command that `make model` takes in FACE_ARGS (`--compile`, `--set K=V`)."""
    words, extra = command.split(), []
    for word, following in zip(words, [*words[1:], None]):
        if word == "--compile" or word.startswith("--set="):
            extra.append(word)
        elif word == "--set" and following is not None:
            extra += [word, following]
    return " ".join(extra)


def training_section(meta: dict, runs: Path | None, shipped: Path | None = None) -> str:
    training = meta["training"]
    stages = training.get("stages", [])
    gpu = [on_gpu(stage["command"]) for stage in stages]
    extra = " ".join(filter(None, (face_args(s["command"]) for s in stages if s["stage"] == "face")))
    make = f'make model FACE_ARGS="{extra}"' if extra else "make model"
    if any(gpu):
        lines = [f"- Exact commands, in order (those with `--device cuda` ran on a lent GPU; `{make}` runs the "
                 "recipe on the CPU alone):"]
    else:
        lines = [f"- Exact commands, in order (`{make}` runs them):"]
    for stage in stages:
        lines.append(f"  - `{stage['command']}`")
    total = typical = gpu_total = 0.0  # as run; every epoch at the fastest epoch's time (undisturbed, roughly)
    for stage, on_device in zip(stages, gpu):
        history = stage_history(stage, runs, shipped)
        if history is not None:
            times = sorted(h["seconds"] for h in json.loads(history.read_text()))
            if on_device:
                gpu_total += sum(times)
            else:
                total += sum(times)
                typical += times[0] * len(times)
            ran = "".join(f", {span}{s['precision']} on {s['machine']}" for span, s in sittings(stage, len(times)))
            lines.append(f"- {stage['stage']} stage{' (GPU)' if on_device else ''}: {len(times)} epochs, "
                         f"{sum(times) / 60:.1f} min of epoch time (fastest epoch {times[0]:.0f} s), best validation "
                         f"epoch {stage.get('best_epoch')}{ran}")
    if total:
        cpus = sorted({s["machine"] for stage, g in zip(stages, gpu) if not g for _, s in sittings(stage, 0)})
        lines.append(f"- Training time on the CPU ({'; '.join(cpus) or 'which CPU was not recorded'}; sum of epoch "
                     f"times as they ran, slowed by any other work on the machine then; data decoding and caching not "
                     f"included): {total / 60:.0f} min; every epoch as fast as the fastest: {typical / 60:.0f} min")
    if gpu_total:
        lines.append(f"- On the GPU: {gpu_total / 60:.1f} min of epoch time (not included above)")
    lines.append(f"- git commit {training.get('git_commit')}, {training.get('date')}, torch {training.get('torch')}")
    return "\n".join(lines)


def sittings(stage: dict, epochs: int) -> list[tuple[str, dict]]:
    """(span, sitting) for each sitting of a stage's record: span is '' for a stage trained in one sitting, else
    'epochs A-B ' (up to `epochs` for the last). Records older than the fields give none."""
    runs = stage.get("sittings") or ([{"first_epoch": 1, **{k: stage[k] for k in ("precision", "machine")}}]
                                     if "machine" in stage else [])
    if len(runs) < 2:
        return [("", s) for s in runs]
    ends = [s["first_epoch"] - 1 for s in runs[1:]] + [max(epochs, runs[-1]["first_epoch"])]
    return [(f"epochs {s['first_epoch']}-{end} ", s) for s, end in zip(runs, ends)]


def reassembled(meta: dict) -> str:
    """A sentence for a file joined from the part files of an earlier export, which wrote them beside it."""
    joined = meta.get("composed_from_parts")
    if not joined:
        return ""
    return (f" This file was joined from the three part files its export wrote beside it; on "
            f"{joined['inputs']} check inputs it gives the probabilities of the single graph that export wrote, "
            f"max |diff| {joined['max_abs_diff_vs_the_single_graph_export']:.1e}.")


def face_cnn(config: dict) -> str:
    """One sentence on the per-frame face CNN, from the model's own config."""
    units = "fused (dense 3x3)" if config.get("video_fused") else "depthwise"
    flip = (" Each frame's embedding is the mean of the crop's and its mirror image's."
            if config.get("face_flip_average") else "")
    side = config["face_size"] // (config["stem_stride"] * config["stem_pool_stride"]) // 2
    sides = [side]
    for stride in config.get("video_strides", (2, 2)):
        sides.append(sides[-1] // stride)
    stages = ", ".join(map(str, sides))
    return (f"Per-frame face CNN: widths {', '.join(map(str, config['video_widths']))}, {units} inverted residual "
            f"units, stages at {stages} pixels a side.{flip}")


def render(model: Path, eval_dir: Path, runs: Path | None) -> str:
    info = read_model_info(model)
    meta = info.metadata
    if not info.trained:
        raise SystemExit(f"{model} is untrained; the card for an untrained model is written by hand")
    mapping = meta["training"].get("label_mapping", {})
    evaluation, found = evaluation_section(eval_dir)
    if not found:
        files = ", ".join(f for f, _, _ in EVALS)
        raise ValueError(f"{eval_dir} holds none of the evaluations a card reports ({files}); run make model-eval, "
                         f"which writes them, or pass --eval-dir")
    crowd = ("\n- Evaluation only: FER+ crowd votes on FER2013 (Barsoum et al. 2016, Microsoft, MIT licence), 10 an "
             "image, to score\n  the face predictions against the crowd's majority as well as FER2013's own label."
             if any("ferplus_majority" in r for r in found.values()) else "")
    return f"""# avtca live model card

`exported/avtca.onnx`: AVT-CA (Venkatraman et al.), `{info.preset}` preset, {len(info.labels)} classes
({', '.join(info.labels)}); {info.frames} grayscale {info.face_size}x{info.face_size} face crops and
{info.window_seconds:g} s of {info.sample_rate_hz} Hz mono audio per prediction.
{face_cnn(meta["config"])} Weights SHA-256
`{meta['weights_sha256']}`. The one file holds the network as three parts with named edges, the per-frame face
encoder, the audio front end and the head; the app cuts them apart for cheap live ticks.{reassembled(meta)}

## Data and licences
- Faces: FER2013 Training (28,709 48x48 grayscale images; research use only, no licence published by its
  creators). Validation: FER2013 PublicTest with exact pixel duplicates of training images removed.
- Voices: RAVDESS speech, audio only, actors 01-16 for training and 17-20 for validation (Livingstone & Russo
  2018, CC BY-NC-SA 4.0: non-commercial).
- Fusion: pairs of a face clip (T augmented views of one FER2013 image) and a RAVDESS voice clip with the same
  label, with modality dropout (both, a soft mix, voice only, face only), so the model also works with one
  modality missing.
- Label mapping: {json.dumps(mapping)}{crowd}

## How it was trained
{training_section(meta, runs, eval_dir / "training")}

## Evaluation (written by avtca-eval through ONNX Runtime; DATA = ../shared/data)
RAVDESS actors 17-20 and FER2013 PublicTest chose the best epoch, so their figures are validation figures, not
held-out test figures; the project's data owners hold back other actors and FER2013 PrivateTest for that.

{evaluation}
## Intended use and limitations
- A demonstration of audio-visual emotion recognition on a laptop: acted emotions (RAVDESS, CREMA-D) and posed
  or web-collected faces (FER2013). Expressions in everyday life are subtler and mixed; treat outputs as a
  noisy signal, never as a judgement about a person.
- The face and the voice were learned from different people: fusion learned that the two agree in label, not
  how one person's face and voice co-vary in time.
- English speech from 16 North American actors; other languages, accents and recording conditions are untested.
- FER2013 and RAVDESS forbid commercial use: so does this model.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avtca.model.card", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("exported/avtca.onnx"))
    p.add_argument("--eval-dir", type=Path, default=Path("exported/eval"))
    p.add_argument("--runs", type=Path, help="where the run folders are when not at the --out of each stage's command")
    p.add_argument("-o", "--output", type=output_file, default=Path("exported/MODEL_CARD.md"))
    args = p.parse_args(argv)
    try:
        text = render(args.model, args.eval_dir, args.runs)
    except (ModelFileError, ValueError) as e:
        print(f"python -m avtca.model.card: {e}", file=sys.stderr)
        return 1
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
