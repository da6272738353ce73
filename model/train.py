"""avtca-train: train AVT-CA on the public datasets with a speaker-independent protocol.

Stages (the live recipe runs the first three in order; see `make model`):
  face    the per-frame face CNN on face images (FER2013 Training; validation PublicTest minus duplicates)
  voice   the audio branch and everything after it on voice clips, the face marked missing
  fusion  temporal, fusion and cross-attention layers on pairs of a face clip and a voice clip with the same
          label, with modality dropout; the face CNN is frozen and its per-frame embeddings cached
  av      the whole network end to end on real audio-video clips (RAVDESS, CREMA-D, a manifest)
Runs the same under `torchrun --nproc_per_node N` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..app.cli import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SHARE, epoch_list, fold,
                       output_folder)
from .cache import cache_dir, copies_of, load_audio_clips, load_face_images
from .card import machine
from .checkpoint import load_checkpoint, provenance, save_checkpoint
from .config import PRESETS, parse_overrides, preset
from .datasets import (Item, ferplus_key, read_dataset, read_ferplus_votes, require_items, speakers_text,
                       split_indices)
from .labels import map_label, mapping_table
from .network import AVTCA, count_parameters
from .splits import by_actors, kfold_by_actor, named_split, parse_actors, random_split
from .stages import (
    ClipData, FaceData, FrameClassifier, FullModel, FusionHead, PairData, VoiceData, VoiceHead,
    cached_frame_embeddings, clip_batches, clip_validate, eval_windows, face_batches, face_loss, face_predict,
    fusion_loss, fusion_validate, pair_batches, voice_batches, CLIP_BATCH, FACE_BATCH,
)
from .metrics import summarise
from .trainer import OptimConfig, Stage, fit, last_state, native_bf16

FACE_VIEWS = 6  # cached augmented views per training face for the fusion stage


def log(msg: str) -> None:
    """Print a progress line; under torchrun only rank 0 speaks (every rank runs the same code)."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


def parse_sources(values: list[str], flag: str) -> list[tuple[str, Path]]:
    out = []
    for v in values or []:
        name, sep, root = v.partition("=")
        if not sep:
            raise SystemExit(f"avtca-train: {flag} {v!r} must look like DATASET=PATH, e.g. ravdess=/data/ravdess")
        out.append((name, Path(root)))
    return out


def labelled(items: list[Item], labels: tuple[str, ...]) -> tuple[list[Item], np.ndarray, Counter]:
    """Items whose label maps onto `labels`, with the mapped indices and the count dropped by mapping."""
    kept, ys, dropped = [], [], Counter()
    for item in items:
        y = map_label(item.label, labels)
        if y is None:
            dropped[f"label {item.label!r} not in the model's label set"] += 1
        else:
            kept.append(item)
            ys.append(y)
    return kept, np.asarray(ys, np.int64), dropped


def report_skips(what: str, *counters: Counter) -> dict:
    total = sum(counters, Counter())
    if total:
        log(f"{what}: skipped {sum(total.values())} ({', '.join(f'{n} {r}' for r, n in total.most_common())})")
    return dict(total)


def split_items(items: list[Item], args) -> dict[str, list[Item]]:
    if args.random_split:
        return random_split(items, args.seed)
    if args.fold:
        k, _, n = args.fold.partition("/")
        return kfold_by_actor(items, int(n), int(k))
    if args.val_actors or args.test_actors:
        return by_actors(items, parse_actors(args.test_actors or ""), parse_actors(args.val_actors or ""))
    return named_split(items, args.split)


def split_parts(items: list[Item], args, what: str) -> dict[str, list[Item]]:
    """`split_items`, refusing a split that leaves no training or no validation items, in a sentence that names the
    speakers there are."""
    parts = split_items(items, args)
    for part, name in (("train", "training"), ("val", "validation")):
        if not parts[part]:
            how = (f"--fold {args.fold}" if args.fold else "--random-split" if args.random_split else
                   " ".join(f"--{flag}-actors {v}" for flag, v in (("test", args.test_actors), ("val", args.val_actors))
                            if v) or f"--split {args.split}")
            raise ValueError(f"{how} leaves no {name} {what}: the {len(items)} found are by speakers "
                             f"{speakers_text(it.speaker for it in items)}; choose others with --val-actors, "
                             f"--test-actors or --fold")
    return parts


def limit(items: list[Item], n: int | None, seed: int) -> list[Item]:
    """At most n items, a seeded sample that keeps the order (for quick runs and tests)."""
    return [items[i] for i in limit_idx(list(range(len(items))), n, seed)]


# ---- data per stage --------------------------------------------------------------------------------------

def face_data(args, cfg) -> tuple[FaceData, dict]:
    sources = parse_sources(args.faces, "--faces")
    if not sources:
        raise SystemExit("avtca-train: this stage needs --faces fer2013=PATH")
    votes = read_ferplus_votes(args.ferplus) if args.ferplus else None  # a wrong folder fails before the images load
    items = [it for name, root in sources for it in read_dataset(name, root).items]
    items, ys, dropped = labelled(items, cfg.labels)
    require_items(len(items), sum(dropped.values()), "face images", dropped, use="used")
    roots, hint = ", ".join(str(r) for _, r in sources), "the face stage trains on train and validates on test"
    train, val = (split_indices(items, part, roots, hint) for part in ("train", "test"))
    train, val = limit_idx(train, args.max_items, args.seed), limit_idx(val, args.max_items, args.seed)
    tr, tr_kept, tr_skip = load_face_images([items[i] for i in train], cfg.face_size, cfg.face_channels)
    va, va_kept, va_skip = load_face_images([items[i] for i in val], cfg.face_size, cfg.face_channels)
    require_items(len(tr), len(train), "training face images", tr_skip, use="used")
    require_items(len(va), len(val), "validation face images", va_skip, use="used")
    tr_y, va_y = ys[np.asarray(train)[tr_kept]], ys[np.asarray(val)[va_kept]]
    unique = ~copies_of(tr, va)
    log(f"faces: {len(tr)} training, {len(va)} validation images; {int((~unique).sum())} validation images are exact "
        f"pixel duplicates of training images and are removed")
    soft = None
    if votes is not None:
        from .stages import soft_targets

        train_items = [items[train[i]] for i in tr_kept]
        found = [votes.get(ferplus_key(it.path)) for it in train_items]
        soft = soft_targets(tr_y, found, cfg.labels, args.ferplus_weight)
        log(f"faces: FER+ votes for {sum(v is not None for v in found)} of {len(found)} training images, "
            f"soft targets with weight {args.ferplus_weight}")
    teacher = {}
    if args.teacher:
        from .stages import distilled_targets, teacher_probabilities

        started = time.monotonic()
        probs, teacher_labels = teacher_probabilities(args.teacher, tr)
        if teacher_labels != tuple(cfg.labels):
            raise ValueError(f"the teacher {args.teacher} has the labels {', '.join(teacher_labels)}, this network "
                             f"{', '.join(cfg.labels)}; a teacher must share the label set")
        soft = distilled_targets(tr_y, probs, args.teacher_weight)
        teacher = {"teacher": str(args.teacher), "teacher_weight": args.teacher_weight,
                   "teacher_train_accuracy": float((probs.argmax(1) == tr_y).mean())}
        log(f"faces: the teacher {args.teacher} agrees with {teacher['teacher_train_accuracy']:.1%} of the training "
            f"labels; soft targets with weight {args.teacher_weight} ({(time.monotonic() - started) / 60:.1f} min)")
    info = {"faces": [f"{n}={r}" for n, r in sources], "face_train": len(tr), "face_val": int(unique.sum()),
            "ferplus": str(args.ferplus) if args.ferplus else None, **teacher,
            "face_val_duplicates_removed": int((~unique).sum()),
            "face_skipped": report_skips("faces", dropped, tr_skip, va_skip),
            "face_label_mapping": mapping_table([it.label for it in items], cfg.labels)}
    return FaceData(tr, tr_y, va[unique], va_y[unique], soft), info


def limit_idx(idx: list[int], n: int | None, seed: int) -> list[int]:
    """At most n of the indices, a seeded sample in their order."""
    if not n or len(idx) <= n:
        return idx
    return sorted(np.random.default_rng(seed).choice(idx, n, replace=False).tolist())


def voice_data(args, cfg) -> tuple[VoiceData, dict]:
    sources = parse_sources(args.voice, "--voice")
    if not sources:
        raise SystemExit("avtca-train: this stage needs --voice DATASET=PATH (ravdess, crema-d, emodb, tess, manifest)")
    items, read_skips = [], Counter()
    for name, root in sources:
        kwargs = {"modalities": ("audio",)} if name in ("ravdess", "crema-d") else {}
        report = read_dataset(name, root, **kwargs)
        items += report.items
        read_skips += report.skipped
    items, _, dropped = labelled(items, cfg.labels)
    require_items(len(items), sum(dropped.values()), "voice clips", dropped, use="used")
    parts = split_parts(items, args, "voice clips")
    train, val = limit(parts["train"], args.max_items, args.seed), limit(parts["val"], args.max_items, args.seed)
    tr, tr_kept, tr_skip = load_audio_clips(train, cfg.sample_rate_hz)
    va, va_kept, va_skip = load_audio_clips(val, cfg.sample_rate_hz)
    require_items(len(tr), len(train), "training clips", tr_skip, use="used")
    require_items(len(va), len(val), "validation clips", va_skip, use="used")
    tr_y = np.asarray([map_label(train[i].label, cfg.labels) for i in tr_kept], np.int64)
    va_y = np.asarray([map_label(val[i].label, cfg.labels) for i in va_kept], np.int64)
    speakers = lambda part: sorted({it.speaker for it in part})  # noqa: E731
    log(f"voices: {len(tr)} training clips (speakers {','.join(speakers(train))}), {len(va)} validation clips "
        f"(speakers {','.join(speakers(val))})")
    info = {"voice": [f"{n}={r}" for n, r in sources], "voice_train": len(tr), "voice_val": len(va),
            "voice_train_speakers": speakers(train), "voice_val_speakers": speakers(val),
            "voice_test_speakers": speakers(parts["test"]),
            "voice_skipped": report_skips("voices", dropped, tr_skip, va_skip),
            "voice_label_mapping": mapping_table([it.label for it in items], cfg.labels)}
    return VoiceData(tr, tr_y, va, va_y), info


def clip_data(args, cfg) -> tuple[ClipData, dict]:
    from .clips import load_av_clips

    sources = parse_sources(args.av, "--av")
    if not sources:
        raise SystemExit("avtca-train: the av stage needs --av DATASET=PATH (ravdess, crema-d, manifest)")
    items = []
    for name, root in sources:
        kwargs = {"modalities": ("av",)} if name in ("ravdess", "crema-d") else {}
        items += read_dataset(name, root, **kwargs).items
    items, _, dropped = labelled(items, cfg.labels)
    require_items(len(items), sum(dropped.values()), "audio-video clips", dropped, use="used")
    parts = split_parts(items, args, "audio-video clips")
    loaded = {}
    for part in ("train", "val"):
        chosen = limit(parts[part], args.max_items, args.seed)
        audio, faces, kept, skipped = load_av_clips(chosen, cfg)
        require_items(len(kept), len(chosen), f"{'training' if part == 'train' else 'validation'} audio-video clips",
                      skipped, use="used")
        ys = np.asarray([map_label(chosen[i].label, cfg.labels) for i in kept], np.int64)
        loaded[part] = (audio, faces, ys, skipped)
    log(f"audio-video clips: {len(loaded['train'][2])} training, {len(loaded['val'][2])} validation")
    info = {"av": [f"{n}={r}" for n, r in sources], "av_train": len(loaded["train"][2]),
            "av_val": len(loaded["val"][2]),
            "av_skipped": report_skips("clips", dropped, loaded["train"][3], loaded["val"][3]),
            "av_label_mapping": mapping_table([it.label for it in items], cfg.labels)}
    (ta, tf, ty, _), (va, vf, vy, _) = loaded["train"], loaded["val"]
    return ClipData(ta, tf, ty, va, vf, vy), info


# ---- the stages -------------------------------------------------------------------------------------------

# Config fields that shape the per-frame face CNN: two checkpoints agreeing on these hold interchangeable ones.
FACE_CNN_FIELDS = ("face_size", "face_channels", "video_widths", "video_repeats", "stem_stride", "stem_pool_stride",
                   "video_strides", "video_fused")


def take_face_cnn(model: AVTCA, earlier: dict, path: Path) -> tuple[AVTCA, dict]:
    """`model` with the face CNN of the checkpoint at `path`, and the training record of both (the stages of
    `path` that `earlier` lacks appended, so that the commands that made every part stay listed).

    The face CNN may be shaped differently (wider, deeper) as long as its embedding has the width the temporal
    layers read; the result then takes the face CNN's shape fields into its config."""
    face_model, face_state = load_checkpoint(path)
    width, wanted = face_model.face_encoder.out_features, model.face_encoder.out_features
    if width != wanted:
        raise ValueError(f"--face-from {path}: its face CNN gives {width}-wide embeddings where the --init "
                         f"checkpoint's temporal layers read {wanted}; give a face CNN whose last video_widths "
                         f"entry is {wanted}")
    differ = {f: getattr(face_model.cfg, f) for f in FACE_CNN_FIELDS
              if getattr(face_model.cfg, f) != getattr(model.cfg, f)}
    if differ:
        reshaped = AVTCA(model.cfg.replace(**differ))
        kept = {k: v for k, v in model.state_dict().items() if not k.startswith("face_encoder.")}
        missing = reshaped.load_state_dict(kept, strict=False).missing_keys
        assert all(k.startswith("face_encoder.") for k in missing), missing
        log(f"face CNN reshaped to the one in {path}: " + ", ".join(f"{k}={v}" for k, v in differ.items()))
        model = reshaped
    model.face_encoder.load_state_dict(face_model.face_encoder.state_dict())
    log(f"face CNN from {path}")
    face = face_state.get("training") or {}
    stages = earlier.get("stages", [])
    return model, {**earlier,
                   "datasets": sorted(set(earlier.get("datasets", [])) | set(face.get("datasets", []))),
                   "label_mapping": {**face.get("label_mapping", {}), **earlier.get("label_mapping", {})},
                   "stages": [*stages, *(s for s in face.get("stages", []) if s not in stages)]}


def build_model(args) -> tuple[AVTCA, dict]:
    if args.init:
        if args.set:
            raise ValueError("--set shapes a new network; with --init the checkpoint's own config is used, "
                             "so leave --set out")
        model, state = load_checkpoint(args.init)
        log(f"starting from {args.init} (preset {model.cfg.preset})")
        earlier = state.get("training") or {}
        if args.face_from:
            model, earlier = take_face_cnn(model, earlier, args.face_from)
        if args.flip_average and not model.cfg.face_flip_average:
            model.cfg = model.cfg.replace(face_flip_average=True)
            model.face_encoder.flip_average = True
            log("face embeddings at inference: mean of each crop and its mirror image (--flip-average)")
        return model.train(), earlier
    if args.face_from:
        raise ValueError("--face-from replaces the face CNN of the --init checkpoint; give --init too")
    overrides = parse_overrides(PRESETS[args.preset], args.set or [])
    if args.it_heads:
        overrides["it_heads"] = args.it_heads
    if args.ct_heads:
        overrides["ct_heads"] = args.ct_heads
    if args.flip_average:
        overrides["face_flip_average"] = True
    torch.manual_seed(args.seed)
    return AVTCA(preset(args.preset, **overrides)), {}


def make_stage(args, model: AVTCA) -> tuple[Stage, dict]:
    cfg = model.cfg
    seed = args.seed
    if args.stage == "face":
        data, info = face_data(args, cfg)
        module = FrameClassifier(model).to(memory_format=torch.channels_last)
        validate = lambda: summarise(data.val_y, face_predict(module, data.val), cfg.labels)  # noqa: E731
        batches = lambda e, share: face_batches(data, e, seed, cfg.num_classes, args.mixup, args.device,  # noqa: E731
                                                 share)
        return Stage("face", module, batches, face_loss, validate, None, cfg.labels,
                     max(len(data.train) // FACE_BATCH, 1), validates_on_device=True), info
    if args.stage == "voice":
        data, info = voice_data(args, cfg)
        module = VoiceHead(model)
        audio = eval_windows(data.val, cfg.window_samples)

        def validate() -> dict:
            with torch.no_grad():
                pred = torch.cat([module(audio[i:i + 256]).argmax(1) for i in range(0, len(audio), 256)]).numpy()
            return summarise(data.val_y, pred, cfg.labels)

        loss = lambda m, b: face_loss(m, b)  # noqa: E731  (same cross-entropy on (input, target) batches)
        batches = lambda e, share: voice_batches(data, cfg.window_samples, e, seed, cfg.num_classes,  # noqa: E731
                                                  args.mixup, share)
        return Stage("voice", module, batches, loss, validate, None,
                     cfg.labels, max(len(data.train) // CLIP_BATCH, 1)), info
    if args.stage == "fusion":
        faces, face_info = face_data(args, cfg)
        voices, voice_info = voice_data(args, cfg)
        log(f"{FACE_VIEWS} views of per-frame embeddings for {len(faces.train)} training faces (computed once per "
            f"face CNN, then read from the cache in {cache_dir()}) ...")
        started = time.monotonic()
        emb = cached_frame_embeddings(model, faces.train, FACE_VIEWS, seed)
        val_emb = cached_frame_embeddings(model, faces.val, 1, seed)[:, 0]
        log(f"embeddings ready in {(time.monotonic() - started) / 60:.1f} min")
        data = PairData(voices, emb, faces.train_y, val_emb, faces.val_y)
        module = FusionHead(model)

        def batches(epoch: int, share: tuple[int, int]):
            return pair_batches(data, model, args.pairs_per_voice, epoch, seed, args.extra_faces, args.mixup, share)

        steps = max(len(voices.train) * args.pairs_per_voice // CLIP_BATCH, 1)
        return Stage("fusion", module, batches, fusion_loss, lambda: fusion_validate(module, data, seed), None,
                     cfg.labels, steps), {**face_info, **voice_info}
    if args.stage == "av":
        data, info = clip_data(args, cfg)
        module = FullModel(model)
        return Stage("av", module, lambda e, share: clip_batches(data, model, e, seed, share), fusion_loss,
                     lambda: clip_validate(model, data), None, cfg.labels, max(len(data.train_y) // CLIP_BATCH, 1)), info
    raise SystemExit(f"avtca-train: unknown stage {args.stage!r}")


def train(args, argv: list[str]) -> dict:
    """Run one stage; writes best.pt, last.pt, history.json, curves.png and confusion.png into args.out."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, earlier = build_model(args)
    stage, data_info = make_stage(args, model)
    datasets = sorted(set(earlier.get("datasets", [])) | set(data_info.get("faces", []) + data_info.get("voice", [])
                                                                 + data_info.get("av", [])))
    label_mapping = {**earlier.get("label_mapping", {}),
                     **{k: v for k, v in data_info.items() if k.endswith("label_mapping")}}
    record = provenance(datasets, label_mapping, ["avtca-train", *argv])
    bf16 = args.bf16 and native_bf16(args.device)
    if args.bf16 and not bf16:
        what = (f"this CPU has no bfloat16 kernels (PyTorch reports {torch.backends.cpu.get_cpu_capability()})"
                if args.device == "cpu" else "this GPU does not support bfloat16")
        log(f"--bf16: {what}; emulated bf16 would train many times slower than fp32, so this run trains in fp32")
    sitting = {"first_epoch": 1, "precision": "bf16" if bf16 else "fp32", "machine": machine(args.device)}
    record["stages"] = [*earlier.get("stages", []), {"stage": args.stage, "command": record["command"],
                                                      "data": data_info, "epochs": args.epochs,
                                                      "optimizer": vars(optim_config(args)),
                                                      "precision": sitting["precision"],
                                                      "machine": sitting["machine"],
                                                      "sittings": sittings(args, sitting)}]

    def save(path: Path, optimizer, extra: dict) -> None:
        stage_record = dict(record)
        stage_record["stages"][-1]["best_epoch"] = extra["best"].get("epoch")
        stage_record["stages"][-1]["validation"] = {k: v for k, v in extra["val"].items() if k != "confusion_matrix"}
        save_checkpoint(path, model, training=stage_record, optimizer=optimizer, extra=extra)

    stage.save = save
    log(f"[{stage.name}] preset {model.cfg.preset}, {count_parameters(model) / 1e6:.2f} M parameters, "
        f"{sum(p.numel() for p in stage.module.parameters() if p.requires_grad) / 1e6:.2f} M trained here")
    result = fit(stage, epochs=args.epochs, optim=optim_config(args), out_dir=args.out, device=args.device,
                 autocast_bf16=bf16, resume=not args.no_resume, log=log, progress=not args.no_progress,
                 compiled=args.compile)
    if result["rank"] == 0 and "metrics" in result["best"]:
        best = result["best"]
        (Path(args.out) / "summary.json").write_text(json.dumps(
            {"stage": args.stage, "best_epoch": best["epoch"], "validation": best["metrics"],
             "history": result["history"]}, indent=1))
        log(f"[{stage.name}] best validation epoch {best['epoch']}: {best['metrics']['accuracy']:.1%} accuracy; "
            f"checkpoint {Path(args.out) / 'best.pt'}")
    return result


def sittings(args, this: dict) -> list[dict]:
    """The sittings of this stage's run folder: those its last.pt records when this run resumes it, then this one
    from the first epoch it trains. A stage run in two sittings (stopped, then resumed on another machine or in
    another precision) keeps where each of its epochs trained."""
    state = None if args.no_resume else last_state(Path(args.out))
    if state is None:
        return [this]
    done = len(state["extra"]["history"])
    stage = ((state.get("training") or {}).get("stages") or [{}])[-1]
    before = stage.get("sittings") or [{"first_epoch": 1, "precision": stage.get("precision", "not recorded"),
                                        "machine": stage.get("machine", "not recorded")}]
    return before if done >= args.epochs else [*before, {**this, "first_epoch": done + 1}]


def optim_config(args) -> OptimConfig:
    milestones = tuple(int(m) for m in args.milestones.split(",")) if args.milestones else ()
    return OptimConfig(name=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                       dampening=args.dampening, milestones=milestones, warmup_epochs=args.warmup_epochs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avtca-train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--stage", choices=["face", "voice", "fusion", "av"], required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="live")
    p.add_argument("--init", type=Path, help="start from this checkpoint (its config wins over --preset)")
    p.add_argument("--face-from", type=Path, help="with --init: take the per-frame face CNN from this checkpoint "
                                                 "instead (e.g. a face stage trained on after the voice stage began)")
    p.add_argument("--out", type=output_folder, required=True, help="run folder: checkpoints, curves, confusion matrix")
    p.add_argument("--faces", action="append", metavar="DATASET=PATH", help="face images, e.g. fer2013=PATH")
    p.add_argument("--ferplus", type=Path, help="folder with fer2013new.csv and ferplus_to_fer2013_jpg.csv: "
                                               "FER+ votes as soft targets for the face stage")
    p.add_argument("--ferplus-weight", type=SHARE, default=0.5, help="share of the FER+ distribution in the target")
    p.add_argument("--teacher", type=Path,
                   help="face stage: distil from this face-stage checkpoint; its probabilities for each training "
                        "image (mirror images averaged) become soft targets beside the labels")
    p.add_argument("--teacher-weight", type=SHARE, default=0.5,
                   help="share of the teacher's probabilities in the target")
    p.add_argument("--voice", action="append", metavar="DATASET=PATH", help="voice clips (repeatable)")
    p.add_argument("--av", action="append", metavar="DATASET=PATH", help="audio-video clips (repeatable)")
    p.add_argument("--split", default="live", help="named actor split: live, ravdess-reference")
    p.add_argument("--val-actors", help="validation actors, e.g. 17-20 (instead of --split)")
    p.add_argument("--test-actors", help="test actors held out of training, e.g. 1-4")
    p.add_argument("--fold", type=fold, help="k-fold by actor: K/N, e.g. 0/5")
    p.add_argument("--random-split", action="store_true", help="the paper's 80/20 split; LEAKS actors, warns")
    p.add_argument("--epochs", type=POSITIVE_INT, default=30)
    p.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default="adamw")
    p.add_argument("--lr", type=POSITIVE, default=2e-3)
    p.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.05)
    p.add_argument("--momentum", type=SHARE, default=0.9)
    p.add_argument("--dampening", type=SHARE, default=0.0)
    p.add_argument("--milestones", type=epoch_list,
                   help="step decay x0.1 at these epochs, e.g. 40,55,65,70 (default cosine)")
    p.add_argument("--warmup-epochs", type=NON_NEGATIVE, default=1.0)
    p.add_argument("--pairs-per-voice", type=POSITIVE_INT, default=4,
                   help="fusion: face pairings per voice clip per epoch")
    p.add_argument("--extra-faces", type=NON_NEGATIVE_INT, default=0,
                   help="fusion: face-only clips of any training face added to each batch of pairs")
    p.add_argument("--mixup", type=NON_NEGATIVE, default=0.0,
                   help="mix each training image, clip or pair with another of the batch, "
                        "weight ~ Beta(A, A), soft targets (0: off)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="replace one field of the preset's config for a new network (repeatable), e.g. "
                        "--set stem_pool_stride=1 --set video_widths=16,64,128,256,512; stored in the checkpoint")
    p.add_argument("--it-heads", type=POSITIVE_INT, help="override the preset's intermediate transformer heads")
    p.add_argument("--ct-heads", type=POSITIVE_INT, help="override the preset's cross-attention heads")
    p.add_argument("--flip-average", action="store_true",
                   help="at inference, average each face crop's embedding with its mirror image's (kept in the "
                        "checkpoint and the export; twice the per-frame cost)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast where the device has bf16 kernels (a GPU, or a CPU with AVX512 or AMX); "
                        "elsewhere fp32, as the log says")
    p.add_argument("--compile", action="store_true",
                   help="run the training steps through torch.compile (needs a C++ compiler; its first steps wait "
                        "while it compiles)")
    p.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-items", type=POSITIVE_INT, help="use at most this many items per split (quick runs, tests)")
    p.add_argument("--no-resume", action="store_true", help="ignore last.pt in --out")
    p.add_argument("--no-progress", action="store_true")
    return p


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with ($CXX, g++, c++ or clang++), or None."""
    found = (shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c)
    return next((path for path in found if path), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("avtca-train: --device cuda asked for, but this torch sees no CUDA device; use --device cpu",
              file=sys.stderr)
        return 2
    if args.compile and args.device == "cpu" and cpp_compiler() is None:
        print("avtca-train: --compile on the CPU needs a C++ compiler (g++ or clang++) on PATH; install one "
              "(Debian: apt-get install g++) or leave out --compile", file=sys.stderr)
        return 2
    if args.teacher and (args.stage != "face" or args.ferplus):
        print("avtca-train: --teacher gives soft targets to the face stage alone, and not beside --ferplus; use it "
              "with --stage face and without --ferplus", file=sys.stderr)
        return 2
    try:
        train(args, argv)
    except (FileNotFoundError, ValueError) as e:
        print(f"avtca-train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process is interrupted; one says so
            print(f"avtca-train: stopped; {stopped_at(Path(args.out), args.epochs)}", file=sys.stderr)
        return 130
    return 0


def stopped_at(out: Path, epochs: int) -> str:
    """Where an interrupted run stands: the checkpoint written after its last finished epoch, which the same
    command resumes from (checkpoints are written whole or not at all), or that there is none yet."""
    state = last_state(out)
    if state is None:
        return f"no epoch had finished, so nothing was saved in {out}"
    done = len(state["extra"]["history"])
    return (f"{out / 'last.pt'} holds epoch {done} of {epochs}; the same command resumes from there (--no-resume "
            f"starts over)")


if __name__ == "__main__":
    raise SystemExit(main())
