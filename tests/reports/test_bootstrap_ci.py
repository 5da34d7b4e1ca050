"""reports.bootstrap: image-level bootstrap CIs from per-image confusion matrices."""

import numpy as np
import pytest

from benchmarks.metrics import mean_iou
from reports.bootstrap import (
    align_by_names,
    bootstrap_miou,
    load_confusion_file,
    paired_difference_ci,
    percentile_ci,
    seed_from_key,
)


def _cms(n, quality, seed=0, c=5):
    rng = np.random.default_rng(seed)
    cms = np.zeros((n, c, c), dtype=np.int64)
    for i in range(n):
        for k in range(c):
            pixels = int(rng.integers(100, 400))
            right = int(pixels * np.clip(quality + rng.normal(0, 0.1), 0, 1))
            cms[i, k, k] += right
            cms[i, k, (k + 1) % c] += pixels - right
    return cms


def test_identical_images_give_a_point_interval():
    cms = np.repeat(_cms(1, 0.7), 8, axis=0)
    dist = bootstrap_miou(cms, resamples=50, seed=1)
    assert np.allclose(dist, mean_iou(cms.sum(0)))


def test_interval_covers_the_estimate_and_shrinks_with_more_images():
    small, large = _cms(20, 0.7, seed=2), _cms(400, 0.7, seed=2)
    lo_s, hi_s = percentile_ci(bootstrap_miou(small, resamples=300, seed=3))
    lo_l, hi_l = percentile_ci(bootstrap_miou(large, resamples=300, seed=3))
    assert lo_l <= mean_iou(large.sum(0)) <= hi_l
    assert hi_l - lo_l < hi_s - lo_s


def test_deterministic_for_a_seed_and_stable_seed_from_key():
    cms = _cms(15, 0.6)
    assert np.array_equal(bootstrap_miou(cms, resamples=40, seed=7), bootstrap_miou(cms, resamples=40, seed=7))
    assert seed_from_key("real|rein|cityscapes") == seed_from_key("real|rein|cityscapes") != seed_from_key("x")


def test_seed_mean_uses_the_same_draw_for_every_seed():
    a, b = _cms(12, 0.6, seed=1), _cms(12, 0.8, seed=2)
    both = align_by_names([([f"i{k:02d}" for k in range(12)], a), ([f"i{k:02d}" for k in range(12)][::-1], b[::-1])])
    assert both.shape == (2, 12, 5, 5) and np.array_equal(both[1], b)
    dist = bootstrap_miou(both, resamples=30, seed=0)
    single = [bootstrap_miou(x, resamples=30, seed=0) for x in (a, b)]
    assert np.allclose(dist, (single[0] + single[1]) / 2)


def test_align_drops_unpaired_images_and_refuses_disjoint_sets():
    a = (["x", "y", "z"], _cms(3, 0.5))
    b = (["y", "z", "w"], _cms(3, 0.5, seed=1))
    assert align_by_names([a, b]).shape[1] == 2
    with pytest.raises(ValueError, match="share no image names"):
        align_by_names([(["p"], _cms(1, 0.5)), (["q"], _cms(1, 0.5))])


def test_paired_difference():
    names = [f"i{k}" for k in range(60)]
    diff, lo, hi = paired_difference_ci((names, _cms(60, 0.85, 1)), (names, _cms(60, 0.55, 2)), resamples=200)
    assert diff > 0 and 0 < lo <= diff <= hi


def test_load_confusion_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="confusion_x.npz"):
        load_confusion_file(tmp_path / "confusion_x.npz")
    np.savez(tmp_path / "bad.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz"):
        load_confusion_file(tmp_path / "bad.npz")
