"""Argument types the command lines share: a value out of range is refused by argparse in one sentence
("avtca-live: error: argument --seconds: '-1' is not a number above 0"), before anything starts."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path


def number(kind: type = float, above: float | None = None, at_least: float | None = None,
           at_most: float | None = None) -> Callable[[str], float | int]:
    """An argparse type: `kind` (int or float) within the bounds given."""
    noun = "a whole number" if kind is int else "a number"
    if at_least is not None and at_most is not None:
        bounds = f"from {at_least} to {at_most}"
    else:
        bounds = " and ".join(filter(None, (f"above {above}" if above is not None else "",
                                            f"at least {at_least}" if at_least is not None else "",
                                            f"at most {at_most}" if at_most is not None else "")))

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (above is not None and value <= above) or \
                (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}{' ' + bounds if bounds else ''}")
        return value

    return parse


POSITIVE = number(float, above=0)
POSITIVE_INT = number(int, at_least=1)
NON_NEGATIVE = number(float, at_least=0)
NON_NEGATIVE_INT = number(int, at_least=0)
SHARE = number(float, at_least=0, at_most=1)


def fold(text: str) -> str:
    """`--fold K/N`: fold K (counted from 0) of N >= 2 folds; returned as given."""
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit() and int(k) < int(n) and int(n) >= 2):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 0 <= K < N and N >= 2, e.g. 0/5")
    return text


def epoch_list(text: str) -> str:
    """`--milestones 40,55,65`: epochs above 0, comma-separated; returned as given."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of epochs, e.g. 40,55,65")
    return text


def not_a_file(path: Path) -> str:
    """Why a path to read is not a file, for a sentence: 'is a folder' or 'does not exist'."""
    return "is a folder" if Path(path).is_dir() else "does not exist"


def _blocking(path: Path) -> Path | None:
    """The nearest of `path`'s parents that exists and is not a folder (so nothing can be written below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_file(text: str) -> Path:
    """A file to write (its folders are made): not a folder, and not below a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name in it")
    if blocked := _blocking(path):
        raise argparse.ArgumentTypeError(f"{blocked} is a file, so {text} cannot be written below it")
    return path


def output_folder(text: str) -> Path:
    """A folder to write into (made if missing): not a file, and not below a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    if blocked := _blocking(path):
        raise argparse.ArgumentTypeError(f"{blocked} is a file, so {text} cannot be made below it")
    return path


def json_file(text: str) -> dict:
    """A JSON file to read, parsed (e.g. figures avtca-eval or avtca-bench wrote)."""
    try:
        return json.loads(Path(text).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{text} is not a readable JSON file ({e})") from None
