"""Classification figures from predictions: accuracy, macro-F1, unweighted average recall. Torch-free."""

from __future__ import annotations

import numpy as np


def confusion(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int counts, rows true class, columns predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, int), np.asarray(predictions, int)), 1)
    return matrix


def summarise(targets: np.ndarray, predictions: np.ndarray, labels: tuple[str, ...] | list[str]) -> dict:
    """accuracy, macro_f1, uar, n, per-class recall and the confusion matrix, as plain JSON types.

    Classes absent from `targets` are left out of macro-F1 and UAR (their recall is undefined).
    """
    m = confusion(targets, predictions, len(labels))
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    tp = np.diag(m).astype(float)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    n = int(m.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "n": n,
        "per_class_recall": {label: (float(r) if s else None) for label, r, s in zip(labels, recall, support)},
        "support": {label: int(s) for label, s in zip(labels, support)},
        "confusion_matrix": m.tolist(),
        "labels": list(labels),
    }


def format_line(name: str, s: dict) -> str:
    return f"{name}: accuracy {s['accuracy']:.1%}  macro-F1 {s['macro_f1']:.3f}  UAR {s['uar']:.1%}  n={s['n']}"
