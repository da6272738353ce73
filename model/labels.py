"""How each dataset's emotion names map onto a model's label set. Torch-free.

Every dataset's own label is first spelled canonically (FER2013 'fear' -> 'fearful', TESS 'ps' -> 'surprised'),
then kept if the model has it, else mapped by FALLBACK (RAVDESS 'calm' -> 'neutral' for a seven-class model),
else dropped (EmoDB 'boredom'). The mapping a run used is recorded in its checkpoint and metrics.
"""

from __future__ import annotations

# Dataset spellings -> canonical names.
CANONICAL = {
    "neutral": "neutral", "calm": "calm", "happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad",
    "angry": "angry", "anger": "angry", "fear": "fearful", "fearful": "fearful", "disgust": "disgust",
    "surprise": "surprised", "surprised": "surprised", "ps": "surprised", "pleasant_surprise": "surprised",
    "pleasant_surprised": "surprised", "boredom": "boredom", "contempt": "contempt",
}
# Canonical names a label set lacks -> their nearest member (None: drop the sample).
FALLBACK = {"calm": "neutral", "boredom": None, "contempt": None}


def canonical(name: str) -> str:
    """A dataset's label spelled canonically; ValueError for a name no reader should produce."""
    key = name.strip().lower()
    if key not in CANONICAL:
        raise ValueError(f"unknown emotion label {name!r}; add it to avtca.model.labels.CANONICAL")
    return CANONICAL[key]


def map_label(name: str, labels: tuple[str, ...]) -> int | None:
    """Index of a dataset label in `labels`, or None where the mapping drops it."""
    c = canonical(name)
    if c in labels:
        return labels.index(c)
    target = FALLBACK.get(c)
    return labels.index(target) if target in labels else None


def mapping_table(names: list[str], labels: tuple[str, ...]) -> dict[str, str | None]:
    """{dataset label: model label or None}, for the record."""
    out = {}
    for n in sorted(set(names)):
        i = map_label(n, labels)
        out[n] = labels[i] if i is not None else None
    return out
