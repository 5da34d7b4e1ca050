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


# ------------------------------------------------------------------------------ written out by hand (issue 19)
def test_mmengine_poly_reaches_min_lr_at_the_last_step():
    """mmseg 1.x PolyLR: t = it / (T - 1). T = 11, power 1, base 1.0, min 0.1: step 5 is half-way, step 10 is
    the last step (at min_lr); mmcv's t = it / T is still above the floor there."""
    mmengine = TrainRecipe(iterations=11, lr=1.0, schedule="poly", power=1.0, min_lr=0.1, poly_convention="mmengine")
    assert lr_factor(mmengine, 5, 1.0) == pytest.approx(0.9 * 0.5 + 0.1, rel=1e-12)
    assert lr_factor(mmengine, 10, 1.0) == pytest.approx(0.1, rel=1e-12)
    mmcv = mmengine.replace(poly_convention="mmcv")
    assert lr_factor(mmcv, 10, 1.0) == pytest.approx(0.9 * (1 - 10 / 11) + 0.1, rel=1e-12)
    # with a constant phase: T counts the iterations after it (VLTSeg: 500 constant, then poly to the end)
    vlt = mmengine.replace(iterations=15, constant_iters=4)
    assert lr_factor(vlt, 4, 1.0) == pytest.approx(1.0) and lr_factor(vlt, 9, 1.0) == pytest.approx(0.55)
    assert lr_factor(vlt, 14, 1.0) == pytest.approx(0.1, rel=1e-12)


def test_poly_of_a_one_step_span_and_past_the_end():
    """A span of 1 is not divided by 0 or 2: mmcv T = 1 gives the floor at step 1; past the end the LR stays at
    the floor (progress is capped at 1, never a negative base of the power)."""
    one = TrainRecipe(iterations=1, lr=1.0, schedule="poly", power=0.9, min_lr=0.25)
    assert lr_factor(one, 0, 1.0) == 1.0 and lr_factor(one, 1, 1.0) == pytest.approx(0.25, rel=1e-12)
    two = TrainRecipe(iterations=2, lr=1.0, schedule="poly", power=1.0, min_lr=0.0, poly_convention="mmengine")
    assert lr_factor(two, 1, 1.0) == pytest.approx(0.0, abs=1e-15)  # span 2 - 1 = 1
    past = TrainRecipe(iterations=10, lr=1.0, schedule="poly", power=0.9, min_lr=0.25)
    assert lr_factor(past, 15, 1.0) == pytest.approx(0.25, rel=1e-12)
    zero = TrainRecipe(iterations=4, lr=1.0, schedule="poly", power=1.0, constant_iters=4)
    assert lr_factor(zero, 4, 1.0) == 1.0  # span 0 is read as 1 (no division by zero)


def test_constant_schedule_and_unknown_schedule():
    const = TrainRecipe(iterations=10, lr=0.5, schedule="constant")
    assert [lr_factor(const, it, 0.5) for it in (0, 5, 9)] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"^unknown LR schedule 'cosine'$"):
        lr_factor(TrainRecipe(iterations=10, schedule="cosine"), 0, 1.0)


def test_warmup_only_before_its_end_and_none_without_it():
    recipe = TrainRecipe(iterations=10, lr=1.0, schedule="constant", warmup_iters=4, warmup_ratio=0.2)
    # 1 - (1 - it / 4) * 0.8 at it = 0, 1, 3; the base LR from it = 4 on
    assert [lr_factor(recipe, it, 2.0) for it in (0, 1, 3, 4, 9)] == pytest.approx(
        [2.0 * 0.2, 2.0 * 0.4, 2.0 * 0.8, 2.0, 2.0], rel=1e-12)
    no_warmup = recipe.replace(warmup_iters=0)
    assert lr_factor(no_warmup, 0, 2.0) == 2.0


def test_sampler_length_defaults_and_empty_split():
    assert len(DeterministicSampler(10, 4, 6, seed=3)) == 24
    assert len(DeterministicSampler(10, 4, 6, seed=3, start_iter=2)) == 16
    import numpy as np

    # defaults: from iteration 0, rank 0 of 1 process: samples g = 0..5 of the stream, nothing skipped or split
    expected = [int(np.random.default_rng([3, 0]).permutation(10)[g]) for g in range(6)]
    assert [i for i, _ in DeterministicSampler(10, 2, 3, seed=3)] == expected
    with pytest.raises(ValueError, match=r"^the training split is empty$"):
        DeterministicSampler(0, 2, 3, seed=0)


def test_sampler_epochs_are_fresh_permutations():
    """Epoch e is numpy's permutation seeded [seed, e], written out here; an epoch boundary inside a batch."""
    import numpy as np

    sampler = DeterministicSampler(5, 3, 4, seed=9)  # 12 samples: epochs 0, 1 and the first two of epoch 2
    expected = [int(np.random.default_rng([9, g // 5]).permutation(5)[g % 5]) for g in range(12)]
    assert [i for i, _ in sampler] == expected
    assert [i for i, _ in sampler.global_batch(1)] == expected[3:6]  # crosses from epoch 0 into epoch 1
    assert [i for i, _ in sampler.global_batch(0)] == expected[0:3]  # back to an epoch already left
    seeds = [int(np.random.SeedSequence([9, g]).generate_state(1)[0]) for g in range(12)]
    assert [s for _, s in sampler] == seeds
