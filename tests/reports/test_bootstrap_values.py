"""reports.bootstrap pinned to values: the image bootstrap written out in plain numpy (same generator calls),
percentile bounds of a known sample, and the stable seed of a row key as a literal (a switch to ``hash()``
or to other digest bytes turns these red)."""

import numpy as np
import pytest

from reports.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    align_by_names,
    bootstrap_miou,
    load_confusion_file,
    paired_difference_ci,
    percentile_ci,
    seed_from_key,
)


def _cms(n, seed, c=4):
    """Per-image matrices with very different images (so every resample differs) and one class never seen."""
    rng = np.random.default_rng(seed)
    cms = rng.integers(0, 30, size=(n, c, c)) + np.eye(c, dtype=np.int64) * rng.integers(20, 200, size=(n, 1, 1))
    cms[:, c - 1, :] = 0
    cms[:, :, c - 1] = 0  # class c-1: absent from GT and prediction, dropped from the mean
    return cms.astype(np.int64)


def _miou(cm):
    """Dataset-level mIoU in percent written out: classes with an empty union are dropped."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return 100.0 * float(np.mean(tp[union > 0] / union[union > 0]))


def _plain_bootstrap(per_seed, resamples, seed):
    """N draws with replacement per resample (``rng.integers(0, N, (B, N))``), the same draw for every seed."""
    per_seed = np.asarray(per_seed)
    n = per_seed.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return np.array([np.mean([_miou(cms[row].sum(0)) for cms in per_seed]) for row in idx])


def test_defaults_are_a_95_percent_interval_of_1000_resamples():
    assert DEFAULT_LEVEL == 0.95 and DEFAULT_RESAMPLES == 1000


def test_bootstrap_distribution_equals_the_written_out_bootstrap():
    cms = _cms(9, seed=0)
    dist = bootstrap_miou(cms, resamples=300, seed=11)  # > 256: crosses the chunk boundary
    np.testing.assert_allclose(dist, _plain_bootstrap(cms[None], 300, 11), rtol=1e-12)
    assert np.unique(dist).size > 250  # the draws really differ


def test_seed_mean_bootstrap_uses_one_draw_for_all_seeds():
    seeds = np.stack([_cms(7, seed=s) for s in (1, 2, 3)])
    dist = bootstrap_miou(seeds, resamples=40, seed=5)
    np.testing.assert_allclose(dist, _plain_bootstrap(seeds, 40, 5), rtol=1e-12)


def test_percentile_interval_bounds():
    samples = np.random.default_rng(0).permutation(np.arange(201.0))  # 0..200, shuffled
    assert percentile_ci(samples) == pytest.approx((5.0, 195.0))  # 2.5% and 97.5% of 200 (a 90% interval: 10, 190)
    assert percentile_ci(samples, 0.9) == pytest.approx((10.0, 190.0))
    with_nan = np.concatenate([samples, [np.nan] * 50])
    assert percentile_ci(with_nan) == pytest.approx((5.0, 195.0))
    # linear interpolation between order statistics
    assert percentile_ci(np.array([0.0, 10.0, 20.0, 30.0]), 0.5) == pytest.approx((7.5, 22.5))
    assert all(np.isnan(v) for v in percentile_ci(np.array([np.nan])))


def test_paired_difference_values():
    names = [f"i{k}" for k in range(8)]
    a, b = _cms(8, seed=4), _cms(8, seed=5)
    diff, lo, hi = paired_difference_ci((names, a), (names[::-1], b[::-1]), resamples=200, seed=3)
    assert diff == pytest.approx(_miou(a.sum(0)) - _miou(b.sum(0)), rel=1e-12)
    idx = np.random.default_rng(3).integers(0, 8, size=(200, 8))
    diffs = np.array([_miou(a[r].sum(0)) - _miou(b[r].sum(0)) for r in idx])
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), rel=1e-12)


def test_align_orders_by_name_and_keeps_only_common_images():
    a = (["b", "a", "c"], np.arange(3 * 4).reshape(3, 2, 2))
    b = (["c", "b", "x"], 100 + np.arange(3 * 4).reshape(3, 2, 2))
    out = align_by_names([a, b])
    assert out.dtype == np.float64 and out.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(out[0], [[[0, 1], [2, 3]], [[8, 9], [10, 11]]])  # a's "b", then "c"
    np.testing.assert_array_equal(out[1], [[[104, 105], [106, 107]], [[100, 101], [102, 103]]])
    with pytest.raises(ValueError, match=r"no confusion files"):
        align_by_names([])


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match="no images"):
        bootstrap_miou(np.zeros((0, 3, 3)))
    with pytest.raises(ValueError, match=r"\[S, N, C, C\]"):
        bootstrap_miou(np.zeros((2, 3, 3, 4)))


def test_seed_from_key_is_pinned():
    """sha256 of the UTF-8 key, first 4 bytes little-endian: the same in every process and Python version."""
    assert seed_from_key("real|rein|cityscapes") == 3348624138
    assert seed_from_key("x") == 1108767021


def test_paired_difference_level_and_default_seed():
    names = [f"i{k}" for k in range(8)]
    a, b = (names, _cms(8, seed=6)), (names, _cms(8, seed=7))
    assert paired_difference_ci(a, b, resamples=50) == paired_difference_ci(a, b, resamples=50, seed=0)
    _, lo, hi = paired_difference_ci(a, b, resamples=100, seed=2, level=0.9)
    idx = np.random.default_rng(2).integers(0, 8, size=(100, 8))
    diffs = np.array([_miou(a[1][r].sum(0)) - _miou(b[1][r].sum(0)) for r in idx])
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diffs, [0.05, 0.95])), rel=1e-12)


def test_bootstrap_defaults_are_1000_resamples_with_seed_0():
    cms = _cms(6, seed=8)
    dist = bootstrap_miou(cms)
    assert dist.shape == (1000,)
    np.testing.assert_allclose(dist, _plain_bootstrap(cms[None], 1000, 0), rtol=1e-12)


def test_missing_confusion_file_says_where_it_comes_from_and_the_fix(tmp_path):
    missing = tmp_path / "eval" / "confusion_bdd100k.npz"
    with pytest.raises(FileNotFoundError) as err:
        load_confusion_file(missing)
    assert str(err.value) == (f"per-image confusion file {missing} is missing (written by runners.run under "
                              "<run>/eval/confusion_<target>.npz); re-run the evaluation or drop the CI")


def test_input_error_messages_in_full():
    def message(call, *args):
        with pytest.raises(ValueError) as err:
            call(*args)
        return str(err.value)

    assert message(bootstrap_miou, np.zeros((0, 3, 3))) == "bootstrap_miou: no images to resample"
    assert message(bootstrap_miou, np.zeros((2, 3, 3, 4))) == (
        "bootstrap_miou: expected [S, N, C, C] or [N, C, C] matrices, got shape (2, 3, 3, 4)")
    assert message(align_by_names, []) == "align_by_names: no confusion files given"
    assert message(align_by_names, [(["a", "b"], np.zeros((2, 2, 2))), (["c"], np.zeros((1, 2, 2)))]) == (
        "align_by_names: the confusion files share no image names ([2, 1] images)")


def test_percentile_interval_is_computed_in_float64():
    # positions 0.025 * 2 = 0.05 and 0.975 * 2 = 1.95 between the order statistics 0, 1, 3: 0.05 and 2.9
    # (interpolated in float32 they would be 0.0500000007 and 2.9000001)
    low, high = percentile_ci(np.array([3.0, 0.0, 1.0], dtype=np.float32))
    assert low == pytest.approx(0.05, rel=1e-12) and high == pytest.approx(2.9, rel=1e-12)


def test_draw_counts_are_how_often_each_image_is_drawn():
    from reports.bootstrap import _draw_counts

    counts = _draw_counts(np.random.default_rng(4), 5, 3)
    idx = np.random.default_rng(4).integers(0, 5, size=(3, 5))
    assert counts.dtype == np.float64
    np.testing.assert_array_equal(counts, [np.bincount(row, minlength=5) for row in idx])
    assert counts.sum(1).tolist() == [5.0, 5.0, 5.0]
