"""Readers for the public emotion datasets in their standard layouts, and a manifest CSV. Torch-free.

Each reader walks `root` recursively (root may sit anywhere above the files), parses labels and speaker IDs from
file names, and returns `Item`s with the dataset's own label; `labels.map_label` maps them onto a model.
Files whose names do not follow the layout are counted, never guessed at.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .config import RAVDESS_LABELS
from .labels import CANONICAL, map_label

AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".m4a"}
VIDEO_EXT = {".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp"}

RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
RAVDESS_MODALITY = {"01": "av", "02": "video", "03": "audio"}
CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
CREMAD_EMOTION = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
FER_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
FER_SPLIT_PREFIX = {"Training": "train", "PublicTest": "test", "PrivateTest": "private"}
EMODB_NAME = re.compile(r"^(\d\d)([a-z]\d\d)([WLEAFTN])([a-z]?)$")
EMODB_EMOTION = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness",
                 "N": "neutral"}
TESS_EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad")


@dataclass(frozen=True)
class Item:
    """One sample of a dataset: a file (or a segment of one), its own label and its speaker."""

    path: Path
    label: str
    speaker: str
    dataset: str
    kind: str  # "av" audio+video file, "video" video only, "audio", "image"
    split: str = ""  # the dataset's own split, where it has one (FER2013: train / test / private)
    start: float | None = None
    end: float | None = None


@dataclass
class ReadReport:
    """What a reader found and what it passed over."""

    items: list[Item] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1


def _files(root: Path, extensions: set[str]) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist; pass the folder that holds the dataset")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def read_ravdess(root: Path, modalities: tuple[str, ...] = ("av", "audio"), speech_only: bool = True) -> ReadReport:
    """RAVDESS `MM-VV-EE-II-SS-RR-AA.{mp4,wav,flac}`: modality, channel, emotion, ..., actor."""
    report = ReadReport()
    for path in _files(root, AUDIO_EXT | VIDEO_EXT):
        m = RAVDESS_NAME.match(path.stem)
        if not m:
            report.skip("name is not MM-VV-EE-II-SS-RR-AA")
            continue
        modality, channel, emotion, _, _, _, actor = m.groups()
        kind = RAVDESS_MODALITY.get(modality)
        if kind is None or not 1 <= int(emotion) <= 8:
            report.skip("unknown modality or emotion code")
            continue
        if kind not in modalities or (speech_only and channel != "01"):
            report.skip(f"not selected ({kind}, {'speech' if channel == '01' else 'song'})")
            continue
        report.items.append(Item(path, RAVDESS_LABELS[int(emotion) - 1], actor, "ravdess", kind))
    return report


def read_cremad(root: Path, modalities: tuple[str, ...] = ("av", "audio")) -> ReadReport:
    """CREMA-D `AAAA_SSS_EEE_LL.{flv,wav}` (VideoFlash/ holds audio-video, AudioWAV/ audio)."""
    report = ReadReport()
    for path in _files(root, AUDIO_EXT | VIDEO_EXT):
        m = CREMAD_NAME.match(path.stem)
        if not m or m.group(3) not in CREMAD_EMOTION:
            report.skip("name is not AAAA_SSS_EEE_LL")
            continue
        kind = "av" if path.suffix.lower() in VIDEO_EXT else "audio"
        if kind not in modalities:
            report.skip(f"not selected ({kind})")
            continue
        report.items.append(Item(path, CREMAD_EMOTION[m.group(3)], m.group(1), "crema-d", kind))
    return report


def read_fer2013(root: Path) -> ReadReport:
    """FER2013 image folders `{train,test}/<class>/*.jpg`; the split comes from the file prefix or the folder."""
    report = ReadReport()
    for path in _files(root, IMAGE_EXT):
        label = path.parent.name.lower()
        if label not in FER_CLASSES:
            report.skip("parent folder is not a FER2013 class")
            continue
        prefix = path.stem.split("_", 1)[0]
        split = FER_SPLIT_PREFIX.get(prefix) or path.parent.parent.name.lower()
        report.items.append(Item(path, label, "", "fer2013", "image", split=split))
    return report


FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                   "NF")


def read_ferplus_votes(ferplus_dir: Path) -> dict[str, list[int]]:
    """FER+ crowd votes per FER2013 image: {'train/angry/Training_1426440.jpg': [10 vote counts]}.

    Reads `fer2013new.csv` (votes, in fer2013.csv row order, named ferNNNNNNN.png) and the index
    `ferplus_to_fer2013_jpg.csv` that maps those names onto the image-folder layout.
    """
    ferplus_dir = Path(ferplus_dir)
    votes_csv, index_csv = ferplus_dir / "fer2013new.csv", ferplus_dir / "ferplus_to_fer2013_jpg.csv"
    for path in (votes_csv, index_csv):
        if not path.is_file():
            raise FileNotFoundError(f"FER+ file {path} is missing; --ferplus needs fer2013new.csv and "
                                    f"ferplus_to_fer2013_jpg.csv in one folder")
    with votes_csv.open(newline="") as f:
        votes = {row["Image name"]: [int(row[c] or 0) for c in FERPLUS_CLASSES]
                 for row in csv.DictReader(f) if row.get("Image name")}
    with index_csv.open(newline="") as f:
        return {row["msambare_path"]: votes[row["ferplus_image"]] for row in csv.DictReader(f)
                if row["ferplus_image"] in votes}


def ferplus_key(path: Path) -> str:
    """The index's key for an image file: its last three path parts, e.g. 'train/angry/Training_1.jpg'."""
    return "/".join(Path(path).parts[-3:])


def ferplus_columns(labels: tuple[str, ...]) -> dict[int, int]:
    """{FER+ vote column: index in `labels`} for the columns `map_label` maps onto `labels` (not contempt, unknown,
    not a face)."""
    columns = {i: map_label(c, labels) for i, c in enumerate(FERPLUS_CLASSES) if c in CANONICAL}
    return {i: j for i, j in columns.items() if j is not None}


def ferplus_majority(votes: list[int] | None, labels: tuple[str, ...]) -> int | None:
    """Index in `labels` of the crowd's choice: the one FER+ class with the most votes, if it maps onto `labels`.

    None where there are no votes, where two classes tie for the most, or where the most-voted class is outside
    `labels` (contempt, unknown, not a face).
    """
    if not votes or max(votes) == 0:
        return None
    top = max(votes)
    if votes.count(top) > 1:
        return None
    return ferplus_columns(labels).get(votes.index(top))


def read_emodb(root: Path) -> ReadReport:
    """EmoDB `wav/03a01Fa.wav`: speaker, text, emotion letter (German initial), version."""
    report = ReadReport()
    for path in _files(root, AUDIO_EXT):
        m = EMODB_NAME.match(path.stem)
        if not m:
            report.skip("name is not SSTTTEv (e.g. 03a01Fa)")
            continue
        report.items.append(Item(path, EMODB_EMOTION[m.group(3)], m.group(1), "emodb", "audio"))
    return report


def read_tess(root: Path) -> ReadReport:
    """TESS `OAF_angry/OAF_back_angry.wav`: speaker OAF or YAF, the word, the emotion last ('ps' surprise)."""
    report = ReadReport()
    for path in _files(root, AUDIO_EXT):
        parts = path.stem.split("_")
        emotion = "_".join(parts[2:]).lower() if len(parts) >= 3 else ""
        if len(parts) < 3 or parts[0].upper() not in ("OAF", "YAF") or emotion not in TESS_EMOTIONS:
            report.skip("name is not SPK_word_emotion")
            continue
        report.items.append(Item(path, emotion, parts[0].upper(), "tess", "audio"))
    return report


def read_manifest(csv_path: Path) -> ReadReport:
    """A CSV with columns path, label, speaker and optional start, end (seconds); paths relative to the CSV."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {csv_path} does not exist")
    report = ReadReport()
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"path", "label", "speaker"} <= set(rows[0]):
        raise ValueError(f"manifest {csv_path} needs the columns path, label, speaker (has {sorted(rows[0])})")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"manifest {csv_path}, line {line}"
        if (row["label"] or "").strip().lower() not in CANONICAL:
            raise ValueError(f"{where}: the label {row['label']!r} is not an emotion name this project reads; use one "
                             f"of {', '.join(sorted(CANONICAL))}")
        path = Path(row["path"])
        path = path if path.is_absolute() else csv_path.parent / path
        suffix = path.suffix.lower()
        kind = "av" if suffix in VIDEO_EXT else "image" if suffix in IMAGE_EXT else "audio"
        try:
            start = float(row["start"]) if row.get("start") else None
            end = float(row["end"]) if row.get("end") else None
        except ValueError:
            raise ValueError(f"{where}: start and end must be seconds, e.g. 1.5, or empty (they are "
                             f"{row.get('start')!r} and {row.get('end')!r})") from None
        report.items.append(Item(path, row["label"], row["speaker"], "manifest", kind, start=start, end=end))
    return report


READERS = {
    "ravdess": read_ravdess,
    "crema-d": read_cremad,
    "fer2013": read_fer2013,
    "emodb": read_emodb,
    "tess": read_tess,
    "manifest": read_manifest,
}


KIND_NAMES = {"av": "audio-video", "video": "video-only", "audio": "audio", "image": "image"}
LAYOUTS = {
    "ravdess": "files named MM-VV-EE-II-SS-RR-AA.wav, .flac or .mp4, e.g. Actor_01/03-01-05-01-01-01-01.wav",
    "crema-d": "files named AAAA_SSS_EEE_LL.wav or .flv, e.g. AudioWAV/1001_DFA_ANG_XX.wav",
    "fer2013": "images in folders named after their class, e.g. train/angry/Training_10118481.jpg",
    "emodb": "files named like wav/03a01Fa.wav",
    "tess": "files named like OAF_angry/OAF_back_angry.wav",
}


def read_dataset(name: str, root: Path, **kwargs) -> ReadReport:
    """Run the named reader. ValueError for an unknown name, and for a root under which the reader found nothing it
    can use (a wrong folder would otherwise train or score on nothing)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(READERS)}")
    report = READERS[name](Path(root), **kwargs)
    if not report.items and name == "manifest":
        raise ValueError(f"the manifest {root} lists no files; give it rows of path, label, speaker")
    if not report.items:
        kinds = " or ".join(KIND_NAMES[k] for k in kwargs.get("modalities", ()))
        what = f"{name} {kinds} files" if kinds else f"{name} files"
        passed = (f" (it passed over {sum(report.skipped.values())}: "
                  f"{', '.join(f'{n} {why}' for why, n in report.skipped.most_common())})" if report.skipped else "")
        raise ValueError(f"found no {what} under {root}{passed}; the reader looks for {LAYOUTS[name]}, "
                         f"so pass the folder that holds them (or one above it)")
    return report


def split_indices(items: list[Item], split: str, where: str, hint: str = "") -> list[int]:
    """Indices of the items in the dataset's own `split` (FER2013: train, test, private); ValueError naming the
    splits there are when none is (`where`: the folders read; `hint`: what the caller needs, appended)."""
    idx = [i for i, it in enumerate(items) if it.split == split]
    if not idx:
        there = ", ".join(sorted({it.split for it in items}))
        raise ValueError(f"none of the {len(items)} face images under {where} is in the {split} split (the splits "
                         f"there: {there}){'; ' + hint if hint else ''}")
    return idx


def speakers_text(speakers) -> str:
    """Speaker IDs for a sentence, runs of numbers as ranges: '01-16, 18', '1001-1091', 'OAF, YAF'."""
    ids = sorted(set(speakers), key=lambda s: (not s.isdigit(), len(s), s))
    out: list[str] = []
    run: list[str] = []
    for sid in ids + [""]:
        if run and sid.isdigit() and len(sid) == len(run[-1]) and int(sid) == int(run[-1]) + 1:
            run.append(sid)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [sid] if sid.isdigit() else []
        if sid and not sid.isdigit():
            out.append(sid)
    return ", ".join(out)


def require_items(n: int, found: int, what: str, skipped: Counter, dropped: int = 0, use: str = "scored") -> None:
    """ValueError when none of the `found` items is left to use, saying why each went (unreadable, silent, a label
    outside the model's)."""
    if n == 0:
        reasons = [f"{k} {why}" for why, k in skipped.most_common()]
        if dropped:
            reasons.append(f"{dropped} with a label outside the model's")
        raise ValueError(f"none of the {found} {what} could be {use} ({', '.join(reasons) or 'none found'})")
