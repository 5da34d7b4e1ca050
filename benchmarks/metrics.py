"""Segmentation metrics (decisions.md §1, §6; datasets.md §8.2).

mIoU is *dataset-level*: per-image confusion matrices are summed over the whole split and the IoU of
each class is computed once from the sums (mmseg ``IoUMetric``, cityscapesscripts, RobustNet). GT pixels
equal to ``ignore_index`` (or outside ``[0, C)``) are dropped from both prediction and GT. A class absent
from both GT and prediction over the whole split has IoU NaN and is left out of the mean; a class in the
GT that is never predicted (or predicted but never in the GT) counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "confusion_matrix",
    "per_class_iou",
    "mean_iou",
    "pixel_accuracy",
    "SplitScore",
    "score_confusion",
    "rpd",
    "relative_drop",
    "mean_over_targets",
    "classes_subset_miou",
]


def confusion_matrix(pred: Any, label: Any, num_classes: int = 19, ignore_index: int = 255) -> np.ndarray:
    """int64 [C, C] confusion matrix; rows = ground truth, columns = prediction.

    ``pred`` and ``label`` are integer arrays of the same shape (numpy or torch). Pixels whose label is
    ``ignore_index`` or outside ``[0, C)`` are dropped. Torch tensors stay on their device
    (``torch.bincount``); only the C*C counts are transferred.
    """
    if tuple(pred.shape) != tuple(label.shape):
        raise ValueError(
            f"confusion_matrix: prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}; "
            "resize the logits to the native label size before argmax"
        )
    c = int(num_classes)
    if isinstance(pred, torch.Tensor) or isinstance(label, torch.Tensor):
        p = torch.as_tensor(pred)
        t = torch.as_tensor(label, device=p.device)
        _check_integer(p.dtype.is_floating_point, "pred")
        _check_integer(t.dtype.is_floating_point, "label")
        t = t.reshape(-1).long()
        p = p.reshape(-1).long()
        keep = (t != ignore_index) & (t >= 0) & (t < c)
        t, p = t[keep], p[keep]
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= c):
            raise ValueError(f"confusion_matrix: predictions must lie in [0, {c}), got [{int(p.min())}, {int(p.max())}]")
        counts = torch.bincount(t * c + p, minlength=c * c)
        return counts.reshape(c, c).cpu().numpy().astype(np.int64)
    p = np.asarray(pred)
    t = np.asarray(label)
    _check_integer(np.issubdtype(p.dtype, np.floating), "pred")
    _check_integer(np.issubdtype(t.dtype, np.floating), "label")
    t = t.reshape(-1).astype(np.int64)
    p = p.reshape(-1).astype(np.int64)
    keep = (t != ignore_index) & (t >= 0) & (t < c)
    t, p = t[keep], p[keep]
    if p.size and (p.min() < 0 or p.max() >= c):
        raise ValueError(f"confusion_matrix: predictions must lie in [0, {c}), got [{p.min()}, {p.max()}]")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def _check_integer(is_float: bool, what: str) -> None:
    if is_float:
        raise TypeError(f"confusion_matrix: {what} must hold integer class ids (argmax of the logits), got floats")


def _as_cm(cm: Any) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square [C, C] confusion matrix, got shape {cm.shape}")
    return cm.astype(np.float64)


def per_class_iou(cm: Any) -> np.ndarray:
    """float64 [C] IoU per class (fractions); NaN where the union is 0 over the whole set."""
    cm = _as_cm(cm)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
    iou[union == 0] = np.nan
    return iou


def _nanmean_percent(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(100.0 * values.mean()) if values.size else math.nan


def mean_iou(cm: Any) -> float:
    """mIoU in percent: ``100 * nanmean(per_class_iou(cm))`` (NaN if every class is absent)."""
    return _nanmean_percent(per_class_iou(cm))


def pixel_accuracy(cm: Any) -> float:
    """Overall pixel accuracy in percent (mmseg ``aAcc``) over non-ignored pixels; NaN for an empty matrix."""
    cm = _as_cm(cm)
    total = cm.sum()
    return float(100.0 * np.trace(cm) / total) if total > 0 else math.nan


def classes_subset_miou(cm: Any, keep: Sequence[int]) -> float:
    """mIoU in percent over the classes ``keep`` only (e.g. the SYNTHIA 16-class convention).

    The IoUs come from the full confusion matrix (pixels predicted as a dropped class still count as
    errors); only the average is restricted to ``keep``.
    """
    iou = per_class_iou(cm)
    idx = np.asarray(list(keep), dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= iou.size:
        raise ValueError(f"classes_subset_miou: keep must be non-empty class ids in [0, {iou.size}), got {list(keep)}")
    return _nanmean_percent(iou[idx])


@dataclass
class SplitScore:
    """Scores of one split, in percent. ``per_class_iou[c]`` is None where the class was absent (NaN)."""

    miou: float
    per_class_iou: list[float | None] = field(default_factory=list)
    acc: float = math.nan
    num_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SplitScore:
        return cls(miou=float(d["miou"]), per_class_iou=list(d.get("per_class_iou", [])),
                   acc=float(d.get("acc", math.nan)), num_images=int(d.get("num_images", 0)))


def score_confusion(cm: Any, num_images: int = 0) -> SplitScore:
    """:class:`SplitScore` of a dataset-level confusion matrix."""
    iou = per_class_iou(cm)
    return SplitScore(
        miou=mean_iou(cm),
        per_class_iou=[None if math.isnan(v) else float(100.0 * v) for v in iou],
        acc=pixel_accuracy(cm),
        num_images=int(num_images),
    )


def rpd(target_miou: float, source_miou: float) -> float:
    """rPD = 100 * mIoU_target / mIoU_source (decisions.md §1): share of in-domain mIoU kept on the target."""
    if not source_miou > 0:
        raise ValueError(f"rpd: the source (reference) mIoU must be > 0, got {source_miou!r}")
    return 100.0 * float(target_miou) / float(source_miou)


def relative_drop(target_miou: float, source_miou: float) -> float:
    """Relative drop = 100 - rPD (decisions.md §1), in percent of the in-domain mIoU."""
    return 100.0 - rpd(target_miou, source_miou)


def mean_over_targets(values: Mapping[str, float]) -> float:
    """Plain arithmetic mean over targets (the papers' "Avg." column; Protocol.aggregation == "mean")."""
    if not values:
        raise ValueError("mean_over_targets: no target values given")
    return float(sum(float(v) for v in values.values()) / len(values))
