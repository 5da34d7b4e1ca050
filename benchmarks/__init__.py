"""DGSS benchmark definitions: protocols as data, dataset-level metrics and split evaluation."""

from .evaluate import (
    EvaluationError,
    SplitEvaluation,
    confusion_path,
    evaluate_split,
    infer_logits,
    load_confusions,
    partial_path,
    resize_logits,
    save_confusions,
    score_file,
    slide_windows,
)
from .metrics import (
    SplitScore,
    classes_subset_miou,
    confusion_matrix,
    mean_iou,
    mean_over_targets,
    per_class_iou,
    pixel_accuracy,
    relative_drop,
    rpd,
    score_confusion,
)
from .protocols import (
    CenterCropSpec,
    InferenceSpec,
    Protocol,
    SplitSpec,
    build_test_transform,
    load_split,
    reported_classes,
    variant_changes,
    get_protocol,
    keep_ratio_size,
    list_protocols,
    list_variants,
    miniature_twin,
    protocol_diff,
)

__all__ = [
    "EvaluationError", "SplitEvaluation", "confusion_path", "evaluate_split", "infer_logits",
    "load_confusions", "partial_path", "resize_logits", "save_confusions", "score_file", "slide_windows",
    "SplitScore", "classes_subset_miou", "confusion_matrix", "mean_iou", "mean_over_targets",
    "per_class_iou", "pixel_accuracy", "relative_drop", "rpd", "score_confusion",
    "CenterCropSpec", "build_test_transform", "load_split", "reported_classes", "variant_changes",
    "InferenceSpec", "Protocol", "SplitSpec", "get_protocol", "keep_ratio_size", "list_protocols",
    "list_variants", "miniature_twin", "protocol_diff",
]
