"""DGSS benchmark definitions: protocols as data, dataset-level metrics and split evaluation."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": ("EvaluationError", "SplitEvaluation", "confusion_path", "evaluate_split", "infer_logits",
                 "load_confusions", "partial_path", "resize_logits", "save_confusions", "score_file",
                 "slide_windows"),
    "metrics": ("SplitScore", "classes_subset_miou", "confusion_matrix", "mean_iou", "mean_over_targets",
                "per_class_iou", "pixel_accuracy", "relative_drop", "rpd", "score_confusion"),
    "protocols": ("CenterCropSpec", "InferenceSpec", "Protocol", "SplitSpec", "build_test_transform", "load_split",
                  "reported_classes", "variant_changes", "get_protocol", "keep_ratio_size", "list_protocols",
                  "list_variants", "miniature_twin", "protocol_diff"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    """Names are imported on first use, so that ``benchmarks.protocols`` (pure Python) does not import torch:
    ``python -m runners.run --help`` answers before any heavy import."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
