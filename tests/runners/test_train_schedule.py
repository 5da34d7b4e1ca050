"""The LR schedule and the deterministic data order of runners.train."""

import pytest

from methods.base import TrainRecipe
from runners.train import DeterministicSampler, lr_factor


def test_poly_decays_to_min_lr_per_group():
    recipe = TrainRecipe(iterations=100, lr=1e-4, schedule="poly", power=0.9, min_lr=0.0)
    assert lr_factor(recipe, 0, 1e-4) == pytest.approx(1e-4)
    assert lr_factor(recipe, 50, 1e-4) == pytest.approx(1e-4 * 0.5**0.9)
    assert lr_factor(recipe, 100, 1e-4) == pytest.approx(0.0)


def test_min_lr_applies_per_group_tqdm_quirk():
    """tqdm G-config: backbone base LR 1e-5 x 0.1 = 1e-6 = min_lr, so it stays constant (mmcv per-group min)."""
    recipe = TrainRecipe(iterations=20000, lr=1e-5, schedule="poly", power=0.9, min_lr=1e-6)
    for it in (0, 5000, 19999):
        assert lr_factor(recipe, it, 1e-6) == pytest.approx(1e-6)
    assert lr_factor(recipe, 10000, 1e-5) == pytest.approx((1e-5 - 1e-6) * 0.5**0.9 + 1e-6)


def test_linear_warmup_mmcv_semantics():
    recipe = TrainRecipe(iterations=1000, lr=1.0, schedule="constant", warmup_iters=100, warmup_ratio=1e-6)
    assert lr_factor(recipe, 0, 1.0) == pytest.approx(1e-6)
    assert lr_factor(recipe, 50, 1.0) == pytest.approx(1 - 0.5 * (1 - 1e-6))
    assert lr_factor(recipe, 100, 1.0) == pytest.approx(1.0)


def test_constant_then_poly_vltseg():
    recipe = TrainRecipe(iterations=5000, lr=1e-4, schedule="poly", power=0.9, constant_iters=500)
    assert lr_factor(recipe, 499, 1e-4) == pytest.approx(1e-4)
    assert lr_factor(recipe, 500, 1e-4) == pytest.approx(1e-4)
    assert lr_factor(recipe, 2750, 1e-4) == pytest.approx(1e-4 * 0.5**0.9)


def test_sampler_is_a_pure_function_of_seed_and_iteration():
    full = list(DeterministicSampler(10, 4, 6, seed=3))
    resumed = list(DeterministicSampler(10, 4, 6, seed=3, start_iter=2))
    assert full[8:] == resumed
    other_seed = list(DeterministicSampler(10, 4, 6, seed=4))
    assert [i for i, _ in full] != [i for i, _ in other_seed]
    # every epoch is a permutation of the items
    first_epoch = sorted(i for i, _ in full[:10])
    assert first_epoch == list(range(10))
    # augmentation seeds are distinct per sample
    assert len({s for _, s in full}) == len(full)


def test_sampler_ranks_partition_the_global_batch():
    single = list(DeterministicSampler(13, 4, 3, seed=0))
    r0 = list(DeterministicSampler(13, 2, 3, seed=0, rank=0, world_size=2))
    r1 = list(DeterministicSampler(13, 2, 3, seed=0, rank=1, world_size=2))
    merged = []
    for it in range(3):
        merged += r0[it * 2:(it + 1) * 2] + r1[it * 2:(it + 1) * 2]
    assert merged == single
    assert len(single) == 3 * 4 and len(r0) == len(r1) == 3 * 2
