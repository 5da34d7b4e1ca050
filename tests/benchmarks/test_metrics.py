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

C = 19


def _random_set(seed=0, n=6, h=23, w=31, absent=(7,), never_predicted=(3,)):
    """Random predictions/labels with ignore pixels, stray label values, an absent class
    (in neither GT nor prediction) and a class present in GT but never predicted."""
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    allowed_pred = np.array([c for c in range(C) if c not in absent and c not in never_predicted])
    allowed_gt = np.array([c for c in range(C) if c not in absent])
    for _ in range(n):
        label = rng.choice(allowed_gt, size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.6, label, rng.choice(allowed_pred, size=(h, w)))
        pred = np.where(np.isin(pred, never_predicted), allowed_pred[0], pred)
        label[rng.random((h, w)) < 0.15] = 255
        label[0, :3] = 19  # out-of-range label values are dropped too
        preds.append(pred.astype(np.int64))
        labels.append(label.astype(np.int64))
    return preds, labels


def _mmseg_style_iou(preds, labels, num_classes=C, ignore_index=255):
    """Independent, from-scratch re-derivation: per image intersect/union/pred/label histograms, summed
    over the dataset, then divided. Pixels whose label is ignore or out of range are dropped from both
    (mmseg only drops ignore pixels; the harness also drops stray label values, datasets.md §8.2)."""
    total_inter = np.zeros(num_classes)
    total_union = np.zeros(num_classes)
    for pred, label in zip(preds, labels):
        mask = (label != ignore_index) & (label >= 0) & (label < num_classes)
        p, t = pred[mask], label[mask]
        inter = p[p == t]
        area_inter = np.histogram(inter, bins=num_classes, range=(0, num_classes - 1))[0]
        area_pred = np.histogram(p, bins=num_classes, range=(0, num_classes - 1))[0]
        area_label = np.histogram(t, bins=num_classes, range=(0, num_classes - 1))[0]
        total_inter += area_inter
        total_union += area_pred + area_label - area_inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return total_inter / total_union


def test_matches_hand_rolled_histograms():
    preds, labels = _random_set()
    cm = sum(confusion_matrix(p, t) for p, t in zip(preds, labels))
    expected = _mmseg_style_iou(preds, labels)
    got = per_class_iou(cm)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)])
    assert math.isclose(mean_iou(cm), 100 * np.nanmean(expected))


def test_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    preds, labels = _random_set(seed=1)
    for lab in labels:  # torchmetrics does not drop out-of-range labels: keep only 0..18 and 255
        lab[lab == 19] = 255
    metric = MulticlassJaccardIndex(num_classes=C, average=None, ignore_index=255, zero_division=float("nan"))
    for p, t in zip(preds, labels):
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    expected = metric.compute().double().numpy()
    cm = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t)) for p, t in zip(preds, labels))
    got = per_class_iou(cm)
    assert np.isnan(got[7]) and got[3] == 0.0  # absent class dropped; never-predicted class counts 0
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(got)], rtol=1e-6)
    # torchmetrics' own mean over present classes
    assert math.isclose(mean_iou(cm), 100 * float(np.nanmean(expected[~np.isnan(got)])), rel_tol=1e-6)


def test_numpy_and_torch_agree():
    preds, labels = _random_set(seed=2, n=1)
    a = confusion_matrix(preds[0], labels[0])
    b = confusion_matrix(torch.from_numpy(preds[0]), torch.from_numpy(labels[0].astype(np.uint8)))
    assert a.dtype == np.int64 and a.shape == (C, C)
    np.testing.assert_array_equal(a, b)


def test_rows_are_gt_and_ignore_dropped():
    label = np.array([[0, 1, 255], [1, 1, 2]])
    pred = np.array([[0, 2, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, label, num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 1, 1], [0, 0, 1]])
    assert cm.sum() == 5  # the prediction on the ignored pixel is not a false positive


def test_nan_class_dropped_and_missing_prediction_counts_zero():
    # class 0 mostly right, class 1 in GT but never predicted, class 2 absent from both,
    # class 3 predicted but never in GT
    label = np.array([0, 0, 1, 1, 0])
    pred = np.array([0, 0, 0, 3, 0])
    cm = confusion_matrix(pred, label, num_classes=4)
    iou = per_class_iou(cm)
    assert iou[0] == pytest.approx(3 / 4)
    assert iou[1] == 0.0 and iou[3] == 0.0 and np.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx(100 * (3 / 4) / 3)  # 3 classes in the mean, not 4
    s = score_confusion(cm, num_images=1)
    assert s.per_class_iou[2] is None and s.per_class_iou[1] == 0.0
    assert s.acc == pytest.approx(60.0) and s.num_images == 1
    assert SplitScore.from_dict(s.to_dict()) == s


def test_dataset_level_not_mean_of_images():
    # image A: class 0 everywhere right (big); image B: tiny, class 0 all wrong
    cm_a = confusion_matrix(np.zeros(100, int), np.zeros(100, int), num_classes=2)
    cm_b = confusion_matrix(np.ones(1, int), np.zeros(1, int), num_classes=2)
    iou = per_class_iou(cm_a + cm_b)
    assert iou[0] == pytest.approx(100 / 101) and iou[1] == 0.0


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix(np.array([5]), np.array([1]), num_classes=3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    assert math.isnan(mean_iou(np.zeros((3, 3), int)))
    assert math.isnan(pixel_accuracy(np.zeros((3, 3), int)))


def test_rpd_and_aggregation():
    assert rpd(50.0, 80.0) == pytest.approx(62.5)
    assert relative_drop(50.0, 80.0) == pytest.approx(37.5)
    with pytest.raises(ValueError):
        rpd(50.0, 0.0)
    assert mean_over_targets({"cityscapes": 60.0, "bdd100k": 50.0, "mapillary": 70.0}) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        mean_over_targets({})


def test_classes_subset_miou():
    preds, labels = _random_set(seed=3)
    cm = sum(confusion_matrix(p, t) for p, t in zip(preds, labels))
    keep = [c for c in range(C) if c not in (9, 14, 16)]
    assert classes_subset_miou(cm, keep) == pytest.approx(100 * np.nanmean(per_class_iou(cm)[keep]))
    assert classes_subset_miou(cm, range(C)) == pytest.approx(mean_iou(cm))
    with pytest.raises(ValueError):
        classes_subset_miou(cm, [19])
