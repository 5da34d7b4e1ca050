"""Image-level bootstrap confidence intervals for dataset-level mIoU (landscape.md §14, items 2 and 4).

A run stores one 19x19 confusion matrix per test image (``eval/confusion_<target>.npz``: ``names`` [N],
``confusion`` int64 [N,C,C]). A bootstrap resample draws N images with replacement, sums their matrices
and scores the sum exactly like the real evaluation (``benchmarks.metrics.mean_iou``: dataset-level IoU,
classes absent from GT and prediction dropped). For a row averaged over seeds, the *same* image draw is
applied to every seed (the seeds were evaluated on the same images) and the seed-mean is taken, so the
interval describes the uncertainty of the seed-mean due to the finite test set. For the average over
targets, each target is resampled independently and the per-draw target means are taken.

Intervals are percentile intervals. The random generator is seeded from the caller's ``seed`` (the
aggregator derives it from the row key), so a result never depends on the order rows are processed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.evaluate import load_confusions
from benchmarks.metrics import mean_iou

__all__ = ["load_confusion_file", "align_by_names", "bootstrap_miou", "percentile_ci", "seed_from_key",
           "paired_difference_ci"]

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


def _metrics():
    return mean_iou


def load_confusion_file(path: Path | str) -> tuple[list[str], np.ndarray]:
    """``(names, confusion int64 [N,C,C])`` from a per-image confusion file written by a run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-image confusion file {path} is missing (written by runners.run under "
                                "<run>/eval/confusion_<target>.npz); re-run the evaluation or drop the CI")
    return load_confusions(path)


def align_by_names(items: Sequence[tuple[list[str], np.ndarray]]) -> np.ndarray:
    """Stack per-seed per-image matrices on their common image names: float64 [S, N, C, C].

    Images present in only some seeds' files are dropped (they cannot be paired); an empty intersection
    is an error naming the counts.
    """
    if not items:
        raise ValueError("align_by_names: no confusion files given")
    common = set(items[0][0])
    for names, _ in items[1:]:
        common &= set(names)
    if not common:
        counts = [len(n) for n, _ in items]
        raise ValueError(f"align_by_names: the confusion files share no image names ({counts} images)")
    order = sorted(common)
    out = []
    for names, cms in items:
        index = {n: i for i, n in enumerate(names)}
        out.append(cms[[index[n] for n in order]])
    return np.stack(out).astype(np.float64)


def seed_from_key(key: str) -> int:
    """A stable 32-bit RNG seed from a text key (sha256; independent of Python's hash randomisation)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "little")


def _draw_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """[B, N] how often each image is drawn in each resample (N draws with replacement)."""
    idx = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n), dtype=np.float64)
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    return counts


def bootstrap_miou(per_seed: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution [B] of the seed-mean mIoU (percent).

    ``per_seed`` is [S, N, C, C] (from :func:`align_by_names`) or [N, C, C] for one seed.
    """
    arr = np.asarray(per_seed, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise ValueError(f"bootstrap_miou: expected [S, N, C, C] or [N, C, C] matrices, got shape {arr.shape}")
    s, n, c, _ = arr.shape
    if n == 0:
        raise ValueError("bootstrap_miou: no images to resample")
    mean_iou = _metrics()
    counts = _draw_counts(np.random.default_rng(seed), n, resamples)
    out = np.empty(resamples)
    for b_start in range(0, resamples, 256):
        w = counts[b_start:b_start + 256]  # [b, N]
        sums = np.einsum("bn,snk->bsk", w, arr.reshape(s, n, c * c)).reshape(-1, s, c, c)
        for j, per_draw in enumerate(sums):
            out[b_start + j] = float(np.mean([mean_iou(cm) for cm in per_draw]))
    return out


def percentile_ci(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Percentile interval (low, high) of a bootstrap distribution; NaN draws are ignored."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    return (float(np.quantile(x, alpha)), float(np.quantile(x, 1.0 - alpha)))


def paired_difference_ci(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray], *,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                         level: float = DEFAULT_LEVEL) -> tuple[float, float, float]:
    """Paired image bootstrap of mIoU(a) - mIoU(b) on the images both were evaluated on:
    (observed difference, low, high). An interval containing 0 means "statistically tied"."""
    mean_iou = _metrics()
    both = align_by_names([a, b])  # [2, N, C, C]
    observed = mean_iou(both[0].sum(0)) - mean_iou(both[1].sum(0))
    counts = _draw_counts(np.random.default_rng(seed), both.shape[1], resamples)
    c = both.shape[-1]
    sums = np.einsum("bn,snk->bsk", counts, both.reshape(2, both.shape[1], c * c)).reshape(-1, 2, c, c)
    diffs = np.array([mean_iou(x[0]) - mean_iou(x[1]) for x in sums])
    low, high = percentile_ci(diffs, level)
    return (float(observed), low, high)
