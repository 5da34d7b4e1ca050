"""benchmarks.metrics on small matrices computed by hand (every expected number is written out), on inputs
where the plausible wrong formulas (median instead of mean, NaN counted as 0, columns instead of rows, ignore
pixels kept, mean of images instead of the dataset sum) give other answers."""

import math

import numpy as np
import pytest
import torch

from benchmarks.metrics import (
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

# rows = ground truth, columns = prediction; class 3 absent from both, class 2 never predicted
CM = np.array([[6, 1, 0, 0],
               [2, 3, 0, 0],
               [1, 1, 0, 0],
               [0, 0, 0, 0]])
# IoU: class 0: 6 / (6 + 1 + 3) = 0.6; class 1: 3 / (3 + 2 + 2) = 3/7; class 2: 0 / 2 = 0; class 3: NaN
IOU = [0.6, 3 / 7, 0.0]


def test_per_class_iou_and_miou_by_hand():
    iou = per_class_iou(CM)
    assert iou.dtype == np.float64 and iou.shape == (4,)
    assert iou[:3].tolist() == pytest.approx(IOU, rel=1e-15) and math.isnan(iou[3])
    assert mean_iou(CM) == pytest.approx(100 * (0.6 + 3 / 7 + 0.0) / 3, rel=1e-15)  # NaN dropped, 0 kept
    assert pixel_accuracy(CM) == pytest.approx(100 * 9 / 14, rel=1e-15)
    assert per_class_iou(CM.T)[1] == pytest.approx(3 / 7) and per_class_iou(CM.T)[2] == 0.0
    assert mean_iou([[0, 0], [0, 0]]) != mean_iou([[0, 0], [0, 0]])  # NaN when nothing was scored


def test_score_confusion_fields():
    s = score_confusion(CM, num_images=7)
    assert s.miou == pytest.approx(100 * (0.6 + 3 / 7) / 3)
    assert s.per_class_iou[:3] == pytest.approx([60.0, 300 / 7, 0.0]) and s.per_class_iou[3] is None
    assert s.acc == pytest.approx(900 / 14) and s.num_images == 7
    d = s.to_dict()
    assert d == {"miou": s.miou, "per_class_iou": s.per_class_iou, "acc": s.acc, "num_images": 7}
    assert SplitScore.from_dict(d) == s
    partial = SplitScore.from_dict({"miou": "12.5"})
    assert partial.miou == 12.5 and partial.per_class_iou == [] and math.isnan(partial.acc)
    assert partial.num_images == 0
    assert math.isnan(SplitScore(miou=1.0).acc) and SplitScore(miou=1.0).per_class_iou == []


def test_classes_subset_miou_by_hand():
    # the IoUs come from the full matrix; only the average is restricted
    assert classes_subset_miou(CM, [0, 2]) == pytest.approx(100 * 0.6 / 2)
    assert classes_subset_miou(CM, [1]) == pytest.approx(100 * 3 / 7)
    assert classes_subset_miou(CM, [0, 1, 3]) == pytest.approx(100 * (0.6 + 3 / 7) / 2)  # NaN class dropped
    assert math.isnan(classes_subset_miou(CM, [3]))
    for bad in ([], [4], [-1]):
        with pytest.raises(ValueError, match=r"keep must be non-empty class ids in \[0, 4\)"):
            classes_subset_miou(CM, bad)


def test_confusion_matrix_by_hand_numpy_and_torch():
    label = np.array([[0, 0, 1, 255], [2, 1, 1, 3], [-1, 0, 2, 2]])
    pred = np.array([[0, 1, 1, 2], [2, 0, 1, 0], [1, 0, 0, 2]])
    # dropped: 255 (ignore), 3 and -1 (outside [0, 3)); kept pixels (gt, pred):
    # (0,0) (0,1) (1,1) (2,2) (1,0) (1,1) (0,0) (2,0) (2,2)
    expected = np.array([[2, 1, 0], [1, 2, 0], [1, 0, 2]])
    for p, t in ((pred, label), (torch.from_numpy(pred), torch.from_numpy(label)),
                 (pred.astype(np.uint8), torch.from_numpy(label))):
        cm = confusion_matrix(p, t, num_classes=3)
        assert cm.dtype == np.int64
        np.testing.assert_array_equal(cm, expected)
    # another ignore value: 255 is then an out-of-range id (still dropped) and 2 is ignored
    np.testing.assert_array_equal(confusion_matrix(pred, label, num_classes=3, ignore_index=2),
                                  [[2, 1, 0], [1, 2, 0], [0, 0, 0]])
    # the default is 19 classes
    assert confusion_matrix(np.array([18]), np.array([18])).shape == (19, 19)
    assert confusion_matrix(np.array([18]), np.array([18]))[18, 18] == 1
    # a prediction on an ignored pixel may be anything (even out of range): it is dropped first
    assert confusion_matrix(np.array([7]), np.array([255]), num_classes=3).sum() == 0
    assert confusion_matrix(torch.tensor([7]), torch.tensor([255]), num_classes=3).sum() == 0


def test_confusion_matrix_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) != label shape \(3, 2\); resize the logits"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int))
    for make in (np.array, torch.tensor):
        with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\), got \[-1, 1\]"):
            confusion_matrix(make([-1, 1]), make([0, 1]), num_classes=3)
        with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\), got \[0, 3\]"):
            confusion_matrix(make([0, 3]), make([0, 1]), num_classes=3)
    with pytest.raises(TypeError, match="pred must hold integer class ids"):
        confusion_matrix(np.zeros(2), np.zeros(2, int))
    with pytest.raises(TypeError, match="label must hold integer class ids"):
        confusion_matrix(np.zeros(2, int), np.zeros(2))
    with pytest.raises(TypeError, match="pred must hold integer class ids"):
        confusion_matrix(torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="label must hold integer class ids"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match=r"square \[C, C\] confusion matrix, got shape \(2, 3\)"):
        mean_iou(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square"):
        pixel_accuracy(np.zeros(4))


def test_rpd_drop_and_mean_by_hand():
    assert rpd(45.0, 60.0) == 75.0 and relative_drop(45.0, 60.0) == 25.0
    assert rpd(0.0, 60.0) == 0.0 and rpd(90.0, 60.0) == 150.0  # more than in-domain is allowed
    assert rpd(0.25, 0.5) == 50.0  # any positive source mIoU is a valid reference, also below 1
    for bad in (0.0, -3.0, float("nan")):
        with pytest.raises(ValueError, match="source .* mIoU must be > 0"):
            rpd(50.0, bad)
    # mean, not median (20) nor midrange (35)
    assert mean_over_targets({"cityscapes": 10.0, "bdd100k": 20.0, "mapillary": 60.0}) == 30.0
    assert mean_over_targets({"a": "4.5"}) == 4.5
    with pytest.raises(ValueError, match="^mean_over_targets: no target values given$"):
        mean_over_targets({})


def test_float32_class_ids_are_refused_like_float64():
    """``np.issubdtype(dtype, np.floating)``, not a check that only catches float64."""
    for dtype in (np.float32, np.float16):
        with pytest.raises(TypeError, match="pred must hold integer class ids"):
            confusion_matrix(np.zeros(2, dtype), np.zeros(2, int))
        with pytest.raises(TypeError, match="label must hold integer class ids"):
            confusion_matrix(np.zeros(2, int), np.zeros(2, dtype))


def test_absent_classes_and_empty_matrices_give_nan_without_warnings():
    """A class absent from both prediction and label (0 / 0) is NaN and dropped from the mean, silently: a
    RuntimeWarning per image would flood an evaluation log. An empty matrix has no accuracy and no mIoU."""
    import warnings

    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 absent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iou = per_class_iou(cm)
        assert iou[:2] == pytest.approx([3 / 6, 4 / 7]) and np.isnan(iou[2])
        assert mean_iou(cm) == pytest.approx(100 * (3 / 6 + 4 / 7) / 2)
        assert math.isnan(mean_iou(np.zeros((3, 3), int)))
        assert math.isnan(pixel_accuracy(np.zeros((3, 3), int)))


def test_pixel_accuracy_of_a_single_pixel():
    assert pixel_accuracy(np.array([[1, 0], [0, 0]])) == 100.0
    assert pixel_accuracy(np.array([[0, 1], [0, 0]])) == 0.0


def test_defaults_ignore_255_and_count_no_images():
    """The default ignore index is 255 (Cityscapes trainId void) even where 255 is a valid class (C = 300)."""
    cm = confusion_matrix(np.array([255, 1]), np.array([255, 1]), num_classes=300)
    assert cm.sum() == 1 and cm[1, 1] == 1
    assert score_confusion(np.eye(2, dtype=int)).num_images == 0
