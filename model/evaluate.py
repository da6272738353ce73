"""avtca-eval: accuracy, macro-F1 and UAR of a model on a dataset, through ONNX Runtime as the app runs it.

A PyTorch checkpoint is evaluated by the same code (`--checkpoint`), giving the same figures up to the export
tolerance. Face images are fed as T copies with the voice marked missing; voice clips as their centre window
with the face marked missing; audio-video clips and face-voice pairs are scored fused, face-only and voice-only
on the same samples, so the gain of fusion is visible.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..app.audio import centre_window
from ..app.cli import NON_NEGATIVE_INT, output_file, output_folder
from ..app.modelfile import ModelFileError, open_model
from .cache import copies_of, load_audio_clips, load_face_images
from .datasets import (Item, ferplus_key, ferplus_majority, read_dataset, read_ferplus_votes, require_items,
                       speakers_text, split_indices)
from .labels import map_label, mapping_table
from .metrics import format_line, summarise
from .splits import pair_indices, parse_actors

MODES = {"fused": (1.0, 1.0), "face_only": (0.0, 1.0), "voice_only": (1.0, 0.0)}
BATCH = 64
PAIR_SEED = 2024


class Predictor:
    """Probabilities from (audio (B, S) float32, faces (B, T, H, W, C) uint8, presence (B, 2) float32)."""

    def __init__(self, run, labels, sample_rate_hz, window_samples, frames, face_size, face_channels, source):
        self.run, self.labels, self.source = run, tuple(labels), source
        self.sample_rate_hz, self.window_samples = sample_rate_hz, window_samples
        self.frames, self.face_size, self.face_channels = frames, face_size, face_channels

    @classmethod
    def onnx(cls, path: Path, threads: int = 0) -> "Predictor":
        session, info = open_model(path, threads=threads)
        run = lambda a, f, p: session.run(None, {"audio": a, "faces": f, "presence": p})[0]  # noqa: E731
        return cls(run, info.labels, info.sample_rate_hz, info.window_samples, info.frames, info.face_size,
                   info.face_channels, f"onnx:{path}")

    @classmethod
    def checkpoint(cls, path: Path) -> "Predictor":
        import torch

        from .checkpoint import load_checkpoint

        model, _ = load_checkpoint(path)
        cfg = model.cfg

        def run(a, f, p):
            with torch.no_grad():
                return model(torch.from_numpy(a), torch.from_numpy(f), torch.from_numpy(p)).numpy()

        return cls(run, cfg.labels, cfg.sample_rate_hz, cfg.window_samples, cfg.frames, cfg.face_size,
                   cfg.face_channels, f"checkpoint:{path}")

    def predict(self, audio: np.ndarray, faces: np.ndarray, presence: tuple[float, float]) -> np.ndarray:
        """(N, classes) probabilities, computed in batches."""
        out = []
        for i in range(0, len(audio), BATCH):
            a, f = audio[i:i + BATCH], faces[i:i + BATCH]
            p = np.tile(np.asarray(presence, np.float32), (len(a), 1))
            out.append(self.run(np.ascontiguousarray(a, np.float32), np.ascontiguousarray(f, np.uint8), p))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def empty_faces(self, n: int) -> np.ndarray:
        return np.zeros((n, self.frames, self.face_size, self.face_size, self.face_channels), np.uint8)

    def empty_audio(self, n: int) -> np.ndarray:
        return np.zeros((n, self.window_samples), np.float32)


def face_clip(crops: np.ndarray, frames: int) -> np.ndarray:
    """(N, H, W, C) single images -> (N, T, H, W, C) clips of T identical frames."""
    return np.repeat(crops[:, None], frames, axis=1)


def filter_actors(items: list[Item], actors: str | None) -> list[Item]:
    """The items by `actors` (e.g. '17-20'); ValueError naming the actors there when none is."""
    if not actors:
        return items
    wanted = parse_actors(actors)
    chosen = [it for it in items if it.speaker.isdigit() and int(it.speaker) in wanted]
    if not chosen:
        files = f"{len(items)} {items[0].dataset} file{'s' if len(items) > 1 else ''}"
        raise ValueError(f"none of the {files} is by actors {actors}; the actors there are "
                         f"{speakers_text(it.speaker for it in items)}")
    return chosen


def _mapped(items: list[Item], labels) -> tuple[list[Item], np.ndarray, int]:
    ys = [map_label(it.label, labels) for it in items]
    kept = [(it, y) for it, y in zip(items, ys) if y is not None]
    return [k[0] for k in kept], np.asarray([k[1] for k in kept], np.int64), len(items) - len(kept)


@dataclass
class FaceImages:
    """A FER2013 split as scored: `crops` and `y` hold the images of `scored`, without the exact pixel duplicates
    of training images, which are kept apart in `duplicate_crops` and `duplicate_y`."""

    items: list[Item]  # every image the reader found, all splits
    scored: list[Item]
    crops: np.ndarray
    y: np.ndarray
    notes: dict
    duplicate_crops: np.ndarray
    duplicate_y: np.ndarray


def fer_images(pred: Predictor, root: Path, split: str) -> FaceImages:
    """FER2013-style folders: the images of `split`, with the exact pixel duplicates of training images set apart,
    and notes on what was set apart or skipped."""
    items, ys, dropped = _mapped(read_dataset("fer2013", root).items, pred.labels)
    test = split_indices(items, split, str(root))
    train = [i for i, it in enumerate(items) if it.split == "train"]
    crops, kept, skipped = load_face_images([items[i] for i in test], pred.face_size, pred.face_channels)
    require_items(len(kept), len(test), f"FER2013 {split} images", skipped)
    scored = [items[test[k]] for k in kept]
    y = ys[np.asarray(test, np.int64)[kept]]
    notes = {"split": split, "skipped": dict(skipped), "dropped_by_label_mapping": dropped,
             "duplicates_of_training_removed": None}
    unique = np.ones(len(crops), bool)
    if split != "train" and train:
        train_crops, _, _ = load_face_images([items[i] for i in train], pred.face_size, pred.face_channels)
        unique = ~copies_of(train_crops, crops)
        notes["duplicates_of_training_removed"] = int((~unique).sum())
    return FaceImages(items, [it for it, u in zip(scored, unique) if u], crops[unique], y[unique], notes,
                      crops[~unique], y[~unique])


def eval_faces(pred: Predictor, root: Path, split: str, ferplus: Path | None = None) -> tuple[dict, dict]:
    """Face images as T identical frames, the voice marked missing. With `ferplus` (the folder of FER+ votes),
    the same predictions are also scored against the crowd's majority (`ferplus_majority`)."""
    votes = read_ferplus_votes(ferplus) if ferplus is not None else None  # a wrong folder fails before the work
    faces = fer_images(pred, root, split)
    notes = faces.notes
    predicted = face_predictions(pred, faces.crops)
    result = summarise(faces.y, predicted, pred.labels)
    result["label_mapping"] = mapping_table([it.label for it in faces.items], pred.labels)
    if len(faces.duplicate_y):
        # Published FER2013 figures usually keep these images; scored here apart, and with the rest.
        on_them = face_predictions(pred, faces.duplicate_crops)
        with_them = summarise(np.concatenate([faces.y, faces.duplicate_y]), np.concatenate([predicted, on_them]),
                              pred.labels)
        result["duplicates_of_training"] = {
            "n": int(len(on_them)), "accuracy_on_them": float((on_them == faces.duplicate_y).mean()),
            "accuracy_with_them": with_them["accuracy"], "n_with_them": with_them["n"]}
    if votes is not None:
        result["ferplus_majority"], notes["ferplus"] = crowd_scores(votes, faces.scored, faces.y, predicted,
                                                                    pred.labels)
        notes["ferplus"]["votes"] = str(ferplus)
    return result, notes


def face_probabilities(pred: Predictor, crops: np.ndarray) -> np.ndarray:
    """Face-only class probabilities of single images, each shown as T identical frames."""
    return pred.predict(pred.empty_audio(len(crops)), face_clip(crops, pred.frames), MODES["face_only"])


def face_predictions(pred: Predictor, crops: np.ndarray) -> np.ndarray:
    """Face-only predicted classes of single images, each shown as T identical frames."""
    return face_probabilities(pred, crops).argmax(1)


def crowd_scores(votes: dict[str, list[int]], scored: list[Item], y: np.ndarray, predicted: np.ndarray, labels
                 ) -> tuple[dict, dict]:
    """Predictions scored against the FER+ crowd's majority (`votes` from `read_ferplus_votes`), on the images
    that have one among `labels`, with how often that majority agrees with the FER2013 label there
    (`crowd_agrees_with_fer2013`)."""
    found = [votes.get(ferplus_key(it.path)) for it in scored]
    crowd = [ferplus_majority(v, labels) for v in found]
    keep = np.asarray([c is not None for c in crowd], bool)
    target = np.asarray([c for c in crowd if c is not None], np.int64)
    result = summarise(target, predicted[keep], labels)
    result["crowd_agrees_with_fer2013"] = float((target == y[keep]).mean()) if keep.any() else 0.0
    without_votes = sum(v is None for v in found)
    notes = {"images_without_votes": without_votes,
             "images_without_a_majority_in_the_labels": int((~keep).sum()) - without_votes}
    return result, notes


def voice_windows(pred: Predictor, items: list[Item]) -> tuple[np.ndarray, np.ndarray, Counter]:
    clips, kept, skipped = load_audio_clips(items, pred.sample_rate_hz)
    audio = np.stack([centre_window(c, pred.window_samples) for c in clips]) if clips else pred.empty_audio(0)
    return audio, kept, skipped


def eval_voices(pred: Predictor, dataset: str, root: Path, actors: str | None) -> tuple[dict, dict]:
    kwargs = {"modalities": ("audio",)} if dataset in ("ravdess", "crema-d") else {}
    all_items = read_dataset(dataset, root, **kwargs).items
    chosen = filter_actors(all_items, actors)
    items, ys, dropped = _mapped(chosen, pred.labels)
    audio, kept, skipped = voice_windows(pred, items)
    require_items(len(kept), len(chosen), f"{dataset} clips", skipped, dropped)
    probs = pred.predict(audio, pred.empty_faces(len(audio)), MODES["voice_only"])
    result = summarise(ys[kept], probs.argmax(1), pred.labels)
    result["label_mapping"] = mapping_table([it.label for it in all_items], pred.labels)
    notes = {"actors": actors, "skipped": dict(skipped), "dropped_by_label_mapping": dropped,
             "items": _per_item([items[i] for i in kept], probs, pred.labels)}
    return result, notes


def eval_av(pred: Predictor, dataset: str, root: Path, actors: str | None, cfg_like) -> tuple[dict, dict]:
    """Real audio-video clips: fused, face-only and voice-only on the same clips."""
    from .clips import load_av_clips

    kwargs = {"modalities": ("av",)} if dataset in ("ravdess", "crema-d") else {}
    all_items = read_dataset(dataset, root, **kwargs).items
    chosen = filter_actors(all_items, actors)
    items, ys, dropped = _mapped(chosen, pred.labels)
    audio, faces, kept, skipped = load_av_clips(items, cfg_like)
    require_items(len(kept), len(chosen), f"{dataset} audio-video clips", skipped, dropped)
    audio = np.stack(audio)
    modes, probs_by_mode = {}, {}
    for mode, presence in MODES.items():
        probs_by_mode[mode] = pred.predict(audio, faces, presence)
        modes[mode] = summarise(ys[kept], probs_by_mode[mode].argmax(1), pred.labels)
    result = dict(modes["fused"])
    result.update(modes)
    result["label_mapping"] = mapping_table([it.label for it in all_items], pred.labels)
    notes = {"actors": actors, "skipped": dict(skipped), "dropped_by_label_mapping": dropped,
             "items": _per_item([items[i] for i in kept], probs_by_mode["fused"], pred.labels,
                                {m: p for m, p in probs_by_mode.items() if m != "fused"})}
    return result, notes


def eval_paired(pred: Predictor, face_root: Path, voice_dataset: str, voice_root: Path, actors: str | None,
                face_split: str, seed: int) -> tuple[dict, dict]:
    """Each voice clip paired with a face image of the same label (seeded), scored three ways."""
    faces = fer_images(pred, face_root, face_split)
    f_items, crops, face_y, removed = faces.items, faces.crops, faces.y, faces.notes["duplicates_of_training_removed"]
    kwargs = {"modalities": ("audio",)} if voice_dataset in ("ravdess", "crema-d") else {}
    v_all = read_dataset(voice_dataset, voice_root, **kwargs).items
    v_chosen = filter_actors(v_all, actors)
    v_items, v_ys, v_dropped = _mapped(v_chosen, pred.labels)
    audio, v_kept, skipped = voice_windows(pred, v_items)
    require_items(len(v_kept), len(v_chosen), f"{voice_dataset} clips", skipped, v_dropped)
    voice_y = v_ys[v_kept]
    face_idx = pair_indices(voice_y, face_y, np.random.default_rng(seed))
    ok = face_idx >= 0
    require_items(int(ok.sum()), len(ok), "voice clips as pairs", Counter({"without a face image of their label":
                                                                             int((~ok).sum())}))
    audio, voice_y, face_idx = audio[ok], voice_y[ok], face_idx[ok]
    clips = face_clip(crops[face_idx], pred.frames)
    modes = {m: summarise(voice_y, pred.predict(audio, clips, p).argmax(1), pred.labels) for m, p in MODES.items()}
    result = dict(modes["fused"])
    result.update(modes)
    result["label_mapping"] = {"faces": mapping_table([it.label for it in f_items], pred.labels),
                               "voices": mapping_table([it.label for it in v_all], pred.labels)}
    notes = {"pairing_seed": seed, "face_split": face_split, "face_duplicates_of_training_removed": removed,
             "voice_actors": actors, "pairs": int(ok.sum()), "voice_clips_without_a_face_of_their_label":
             int((~ok).sum()), "skipped": dict(skipped)}
    return result, notes


def _per_item(items: list[Item], probs: np.ndarray, labels, other: dict | None = None) -> list[dict]:
    rows = []
    for k, (item, p) in enumerate(zip(items, probs)):
        row = {"file": item.path.name, "label": item.label, "predicted": labels[int(p.argmax())],
               "confidence": round(float(p.max()), 3)}
        for mode, op in (other or {}).items():
            row[f"{mode}_predicted"] = labels[int(op[k].argmax())]
        rows.append(row)
    return rows


class _CfgLike:
    """The fields load_av_clips reads, taken from a Predictor."""

    def __init__(self, p: Predictor, window_seconds: float):
        self.sample_rate_hz, self.window_samples, self.frames = p.sample_rate_hz, p.window_samples, p.frames
        self.face_size, self.face_channels, self.window_seconds = p.face_size, p.face_channels, window_seconds


def evaluate(args) -> dict:
    pred = Predictor.checkpoint(args.checkpoint) if args.checkpoint else Predictor.onnx(args.model, args.threads)
    window_seconds = pred.window_samples / pred.sample_rate_hz
    if args.dataset == "fer2013":
        result, notes = eval_faces(pred, args.root, args.split or "test", args.ferplus)
    elif args.dataset == "paired":
        if not (args.face_root and args.voice_root):
            raise ValueError("--dataset paired needs --face-root (FER2013 folders) and --voice-root")
        result, notes = eval_paired(pred, args.face_root, args.voice_dataset, args.voice_root, args.actors,
                                    args.split or "test", args.seed)
    elif args.av:
        result, notes = eval_av(pred, args.dataset, args.root, args.actors, _CfgLike(pred, window_seconds))
    else:
        result, notes = eval_voices(pred, args.dataset, args.root, args.actors)
    result["dataset"] = args.dataset
    result["model"] = pred.source
    result["notes"] = notes
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avtca-eval", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="exported .onnx model (default exported/avtca.onnx)")
    src.add_argument("--checkpoint", type=Path, help="a PyTorch checkpoint from avtca-train instead")
    p.add_argument("--dataset", required=True,
                   choices=["fer2013", "ravdess", "crema-d", "emodb", "tess", "paired", "manifest"])
    p.add_argument("--root", type=Path, help="any folder above the dataset's files (a CSV file for manifest)")
    p.add_argument("--split", help="fer2013 split to score: test (PublicTest, default), private, train")
    p.add_argument("--ferplus", type=Path, help="fer2013: also score against the FER+ crowd's majority (the folder "
                   "with fer2013new.csv and ferplus_to_fer2013_jpg.csv)")
    p.add_argument("--actors", help="only these speakers, e.g. 17-20")
    p.add_argument("--av", action="store_true", help="score the audio-video files (RAVDESS 01-*, CREMA-D .flv)")
    p.add_argument("--face-root", type=Path, help="paired: FER2013 folders")
    p.add_argument("--voice-root", type=Path, help="paired: voice dataset folder")
    p.add_argument("--voice-dataset", default="ravdess", help="paired: which reader the voice root needs")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=PAIR_SEED, help="paired: pairing seed")
    p.add_argument("--per-item", action="store_true", help="print each file's prediction")
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, help="ONNX Runtime threads (0: its default)")
    p.add_argument("--json", type=output_file, help="write the figures here")
    p.add_argument("--plots", type=output_folder, help="write confusion-matrix PNGs into this folder")
    args = p.parse_args(argv)
    if args.model is None and args.checkpoint is None:
        from ..app.paths import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    if args.dataset != "paired" and args.root is None:
        p.error(f"--dataset {args.dataset} needs --root")
    if args.ferplus and args.dataset != "fer2013":
        p.error("--ferplus scores FER2013 images only; use it with --dataset fer2013")
    try:
        result = evaluate(args)
    except (ModelFileError, FileNotFoundError, ValueError) as e:
        print(f"avtca-eval: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("avtca-eval: stopped before the end; nothing was scored or written", file=sys.stderr)
        return 130
    modes = [m for m in MODES if m in result] or [None]
    for mode in modes:
        print(format_line(f"{args.dataset} {mode or ''}".strip(), result[mode] if mode else result))
    if "duplicates_of_training" in result:
        d = result["duplicates_of_training"]
        print(f"{args.dataset} with the {d['n']} exact duplicates of training images kept (as published FER2013 "
              f"figures usually are): accuracy {d['accuracy_with_them']:.1%}  n={d['n_with_them']}; on the "
              f"duplicates alone {d['accuracy_on_them']:.1%}")
    if "ferplus_majority" in result:
        crowd = result["ferplus_majority"]
        print(format_line(f"{args.dataset} against the FER+ crowd's majority", crowd)
              + f"  (the crowd agrees with FER2013's label on {crowd['crowd_agrees_with_fer2013']:.1%})")
    if args.per_item:
        for row in result["notes"].get("items", []):
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.plots:
        from .plots import confusion_png

        for mode in modes:
            r = result[mode] if mode else result
            name = f"{args.dataset}{'_' + mode if mode else ''}"
            confusion_png(r["confusion_matrix"], r["labels"], args.plots / f"confusion_{name}.png",
                          f"{name}: {r['accuracy']:.1%} accuracy, n={r['n']}")
        if "ferplus_majority" in result:
            r = result["ferplus_majority"]
            confusion_png(r["confusion_matrix"], r["labels"], args.plots / f"confusion_{args.dataset}_ferplus.png",
                          f"{args.dataset} against the FER+ majority: {r['accuracy']:.1%} accuracy, n={r['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
