"""Speaker-independent splits, built from parsed speaker IDs. Torch-free.

A random split of RAVDESS or CREMA-D puts the same actors (and near-copies of test clips) into training;
it exists only behind an explicit flag that warns, for comparison with the paper's 80/20.
"""

from __future__ import annotations

import random
import warnings

import numpy as np

from .datasets import Item

# Named actor splits: {name: (test actors, validation actors)}; every other actor trains.
NAMED_SPLITS = {
    "ravdess-reference": (range(1, 5), range(5, 9)),  # the reference code's 4/4/16 actor protocol
    "live": ((), range(17, 21)),  # the live model: RAVDESS speech actors 01-16 train, 17-20 validate
}


def parse_actors(spec: str) -> set[int]:
    """'1-4,7' -> {1, 2, 3, 4, 7}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"actor list {spec!r} is not like '1-4,7'") from None
    return out


def by_actors(items: list[Item], test: set[int], val: set[int]) -> dict[str, list[Item]]:
    """{'train', 'val', 'test'} by numeric speaker ID; an actor is in exactly one part."""
    if test & val:
        raise ValueError(f"actors {sorted(test & val)} are in both test and validation")
    parts: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for item in items:
        if not item.speaker.isdigit():
            raise ValueError(f"the speaker {item.speaker!r} of {item.path.name} is not a number, so an actor list "
                             f"(--split, --val-actors, --test-actors) cannot name it; use --fold K/N, which splits by "
                             f"any speaker name")
        actor = int(item.speaker)
        parts["test" if actor in test else "val" if actor in val else "train"].append(item)
    return parts


def named_split(items: list[Item], name: str) -> dict[str, list[Item]]:
    if name not in NAMED_SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {sorted(NAMED_SPLITS)} or use --fold")
    test, val = NAMED_SPLITS[name]
    return by_actors(items, set(test), set(val))


def kfold_by_actor(items: list[Item], folds: int, fold: int) -> dict[str, list[Item]]:
    """Fold `fold` of `folds`: its actors test, the next fold's actors validate, the rest train."""
    actors = sorted({item.speaker for item in items}, key=lambda s: (len(s), s))
    if not 0 <= fold < folds <= len(actors):
        raise ValueError(f"fold {fold} of {folds} needs 0 <= fold < folds <= {len(actors)} actors")
    test = {a for i, a in enumerate(actors) if i % folds == fold}
    val = {a for i, a in enumerate(actors) if i % folds == (fold + 1) % folds}
    parts: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for item in items:
        parts["test" if item.speaker in test else "val" if item.speaker in val else "train"].append(item)
    return parts


def random_split(items: list[Item], seed: int, test_share: float = 0.2) -> dict[str, list[Item]]:
    """The paper's 80/20 split, ignoring actors. It leaks: the same actors are on both sides."""
    warnings.warn("random split: the same actors appear in training and test, so test accuracy overstates "
                  "recognition of unseen people; report the actor-independent split first", stacklevel=2)
    shuffled = items[:]
    random.Random(seed).shuffle(shuffled)
    n_test = int(round(len(shuffled) * test_share))
    return {"train": shuffled[n_test:], "val": shuffled[:n_test], "test": shuffled[:n_test]}


def pair_indices(voice_y: np.ndarray, face_y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each voice label, a face index with the same label, drawn at random (-1 where none exists)."""
    by_label = {int(c): np.flatnonzero(face_y == c) for c in np.unique(face_y)}
    out = np.full(len(voice_y), -1, np.int64)
    for i, c in enumerate(voice_y):
        pool = by_label.get(int(c))
        if pool is not None and len(pool):
            out[i] = pool[rng.integers(len(pool))]
    return out
