"""Mask2Former's set criterion and matcher against plain computations written out here: per-match BCE / Dice
loops, bilinear weights typed by hand, pixel-centre point samples read off the masks, the defaults and messages
in full. Complements the hand cases of ``test_mask2former_parts.py``."""

from __future__ import annotations

import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

import methods.heads.criterion as criterion_module
from methods.heads import FixedMatcher, HungarianMatcher, Mask2FormerCriterion, semantic_targets
from methods.heads.criterion import dice_loss, sigmoid_bce_loss, uncertain_point_coords
from methods.heads.matcher import mask_cost_bce, mask_cost_dice, point_sample


def bilinear(mask: torch.Tensor, x: float, y: float) -> float:
    """mask [H, W] at normalised (x, y): pixel centres at (i + 0.5) / size, zero outside (align_corners=False)."""
    h, w = mask.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = 0.0
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * float(mask[yi, xi])
    return out


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def dice(logits: list[float], targets: list[float], eps: float = 1.0) -> float:
    p = [1 / (1 + math.exp(-v)) for v in logits]
    return 1 - (2 * sum(a * b for a, b in zip(p, targets)) + eps) / (sum(p) + sum(targets) + eps)


# ------------------------------------------------------------------------------------------ defaults, messages
def test_criterion_and_matcher_defaults():
    crit = Mask2FormerCriterion(4)
    assert crit.num_classes == 4
    assert (crit.class_weight, crit.mask_weight, crit.dice_weight) == (2.0, 5.0, 5.0)
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert crit.mask_loss_on_points is True and crit.class_loss_norm == "class_weights"
    torch.testing.assert_close(crit.empty_weight, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.1]))
    assert "empty_weight" not in crit.state_dict()  # a constant of the config, not checkpointed
    m = crit.matcher
    assert isinstance(m, HungarianMatcher)
    assert (m.class_weight, m.mask_weight, m.dice_weight, m.num_points) == (2.0, 5.0, 5.0, 12544)
    m = HungarianMatcher()
    assert (m.class_weight, m.mask_weight, m.dice_weight, m.num_points) == (2.0, 5.0, 5.0, 12544)
    fixed = FixedMatcher(4)
    assert Mask2FormerCriterion(4, fixed).matcher is fixed and fixed.num_classes == 4
    crit = Mask2FormerCriterion(2, class_weight=1.5, mask_weight=4.0, dice_weight=3.0, no_object_weight=0.25,
                                num_points=7)
    assert (crit.matcher.class_weight, crit.matcher.mask_weight, crit.matcher.dice_weight,
            crit.matcher.num_points) == (1.5, 4.0, 3.0, 7)
    assert crit.empty_weight.tolist() == [1.0, 1.0, 0.25]


def test_messages_in_full():
    with pytest.raises(ValueError, match="^" + re.escape(
            "class_loss_norm='mean': expected one of ('class_weights', 'queries')") + "$"):
        Mask2FormerCriterion(3, class_loss_norm="mean")
    crit = Mask2FormerCriterion(3, FixedMatcher(4))
    target = {"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}
    out = {"pred_logits": torch.zeros(2, 4, 4), "pred_masks": torch.zeros(2, 4, 2, 2)}
    with pytest.raises(ValueError, match=r"^2 predictions but 1 targets$"):
        crit(out, [target])
    out = {"pred_logits": torch.zeros(1, 4, 5), "pred_masks": torch.zeros(1, 4, 2, 2)}
    with pytest.raises(ValueError, match=r"^class logits have 5 entries, expected num_classes\+1 = 4$"):
        crit(out, [target])
    with pytest.raises(ValueError, match=r"^FixedMatcher needs one query per class: 4 queries, 3 classes$"):
        FixedMatcher(3)(torch.zeros(1, 4, 6), torch.zeros(1, 4, 2, 2), [target])
    with pytest.raises(ValueError, match=r"^1 predictions but 2 targets$"):
        HungarianMatcher()(torch.zeros(1, 4, 6), torch.zeros(1, 4, 2, 2), [target, target])
    with pytest.raises(ValueError, match=r"^labels must be \[B, H, W\] train ids, got shape \(2, 2\)$"):
        semantic_targets(torch.zeros(2, 2, dtype=torch.long), 3)
    bad = torch.tensor([[list(range(3, 15)) + [-1, 0, 2, 255, 255]]])  # 13 bad values; only the first 10 shown
    message = ("labels hold values [-1, 3, 4, 5, 6, 7, 8, 9, 10, 11] outside the train ids 0..2 and ignore 255; "
               "convert the dataset's ids to train ids (datasets.labels) first")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        semantic_targets(bad, 3)


# ------------------------------------------------------------------------------------------ semantic_targets
def test_semantic_targets_types_other_ignore_value_and_bounds():
    labels = torch.tensor([[[2, 2, 7], [0, 7, 7]], [[1, 7, 7], [7, 7, 1]]], dtype=torch.uint8)
    targets = semantic_targets(labels, num_classes=3, ignore_index=7)
    assert [t["labels"].tolist() for t in targets] == [[0, 2], [1]]
    assert targets[0]["labels"].dtype == torch.long and targets[0]["masks"].dtype == torch.bool
    assert targets[0]["masks"].tolist() == [[[False, False, False], [True, False, False]],
                                            [[True, True, False], [False, False, False]]]
    assert targets[1]["masks"].tolist() == [[[True, False, False], [False, False, True]]]
    with pytest.raises(ValueError, match=r"values \[255\]"):  # 255 is not the ignore value here
        semantic_targets(torch.tensor([[[0, 255]]]), 3, ignore_index=7)
    with pytest.raises(ValueError, match=r"values \[3\]"):  # num_classes itself is out of range
        semantic_targets(torch.tensor([[[0, 3]]]), 3)
    # the last class of the last image (the bin before the ignore bin) is found
    assert semantic_targets(torch.tensor([[[0]], [[2]]]), 3)[1]["labels"].tolist() == [2]


# ------------------------------------------------------------------------------------------ the losses
def test_dice_and_bce_against_loops():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, generator=g) * 3
    targets = (torch.rand(3, 5, generator=g) > 0.5).float()
    rows_bce = [sum(bce(float(a), float(b)) for a, b in zip(lr, tr)) / 5 for lr, tr in zip(logits, targets)]
    rows_dice = [dice(lr.tolist(), tr.tolist()) for lr, tr in zip(logits, targets)]
    torch.testing.assert_close(sigmoid_bce_loss(logits, targets, 2.0), torch.tensor(sum(rows_bce) / 2))
    torch.testing.assert_close(dice_loss(logits, targets, 2.0), torch.tensor(sum(rows_dice) / 2))
    torch.testing.assert_close(dice_loss(logits, targets, 2.0, eps=0.5),
                               torch.tensor(sum(dice(lr.tolist(), tr.tolist(), 0.5)
                                                for lr, tr in zip(logits, targets)) / 2))


def test_pairwise_mask_costs_against_loops():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 5, generator=g) * 2, torch.rand(2, 5, generator=g)  # soft targets too
    cost_bce, cost_dice = mask_cost_bce(pred, target), mask_cost_dice(pred, target)
    cost_dice_eps = mask_cost_dice(pred, target, eps=0.5)
    assert cost_bce.shape == cost_dice.shape == (3, 2)
    for q in range(3):
        for k in range(2):
            mean_bce = sum(bce(float(a), float(b)) for a, b in zip(pred[q], target[k])) / 5
            assert float(cost_bce[q, k]) == pytest.approx(mean_bce, rel=1e-5)
            assert float(cost_dice[q, k]) == pytest.approx(dice(pred[q].tolist(), target[k].tolist()), rel=1e-5)
            assert float(cost_dice_eps[q, k]) == pytest.approx(dice(pred[q].tolist(), target[k].tolist(), 0.5),
                                                               rel=1e-5)


def test_point_sample_shared_and_own_points():
    g = torch.Generator().manual_seed(2)
    masks = torch.randn(2, 3, 4, generator=g)
    shared = torch.tensor([[0.1, 0.2], [0.5, 0.5], [0.95, 0.02], [0.3, 0.8]])  # two within half a pixel of a border
    own = torch.rand(2, 5, 2, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # grid_sample warns when align_corners is not given
        got = point_sample(masks, shared)
        got64 = point_sample(masks.double(), shared)  # float32 points, float64 masks
        got_own = point_sample(masks.double(), own)
    assert got.shape == (2, 4) and got64.dtype == torch.float64
    for n in range(2):
        for p in range(4):
            assert float(got[n, p]) == pytest.approx(bilinear(masks[n], *shared[p].tolist()), abs=1e-6)
            assert float(got64[n, p]) == pytest.approx(bilinear(masks[n], *shared[p].float().tolist()), abs=1e-6)
    got = got_own
    assert got.shape == (2, 5) and got.dtype == torch.float64
    for n in range(2):
        for p in range(5):
            assert float(got[n, p]) == pytest.approx(bilinear(masks[n], *own[n, p].tolist()), abs=1e-9)


def test_hungarian_costs_written_out():
    """The matcher's cost: -weighted softmax of the target class + weighted mean BCE + weighted Dice on the same
    ``num_points`` uniform points (drawn from the global generator) for predictions and targets; an image without
    targets gets a [Q, 0] float32 matrix."""
    g = torch.Generator().manual_seed(3)
    logits, masks = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g) * 3
    target_masks = torch.rand(2, 8, 8, generator=g) > 0.5
    targets = [{"labels": torch.tensor([2, 0]), "masks": target_masks},
               {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}]
    matcher = HungarianMatcher(class_weight=1.5, mask_weight=4.0, dice_weight=3.0, num_points=6)
    torch.manual_seed(7)
    costs = matcher.cost_matrices(logits, masks, targets)
    torch.manual_seed(7)
    points = torch.rand(6, 2).tolist()
    probs = logits[0].softmax(-1)
    expected = torch.zeros(3, 2)
    for q in range(3):
        pred = [bilinear(masks[0, q], x, y) for x, y in points]
        for k, label in enumerate([2, 0]):
            tgt = [bilinear(target_masks[k].float(), x, y) for x, y in points]
            expected[q, k] = (-1.5 * probs[q, label] + 4.0 * sum(bce(a, b) for a, b in zip(pred, tgt)) / 6
                              + 3.0 * dice(pred, tgt))
    torch.testing.assert_close(costs[0], expected, rtol=1e-5, atol=1e-5)
    assert costs[1].shape == (3, 0) and costs[1].dtype == torch.float32
    rows, cols = matcher(logits, masks, targets)[1]
    assert rows.tolist() == cols.tolist() == [] and rows.dtype == cols.dtype == torch.long
    # an image without targets first, bf16 predictions: every matrix is float32 and the next image still gets its own
    torch.manual_seed(7)
    costs = matcher.cost_matrices(logits.flip(0).bfloat16(), masks.flip(0).bfloat16(), targets[::-1])
    assert [(c.dtype, tuple(c.shape)) for c in costs] == [(torch.float32, (3, 0)), (torch.float32, (3, 2))]
    torch.testing.assert_close(costs[1], expected, rtol=0.05, atol=0.05)


def test_hungarian_assignment_of_given_costs(monkeypatch):
    """``__call__`` on cost matrices written here (one transfer for all, split back per image): the minimum-cost
    assignment of each, an image without targets in between, a 1x1 problem, and no images at all."""
    costs = [torch.tensor([[5.0, 1.0], [1.0, 5.0], [9.0, 9.0]]), torch.zeros(3, 0), torch.tensor([[2.0], [4.0], [3.0]]),
             torch.tensor([[9.0, 9.0], [1.0, 2.0], [2.0, 9.0]])]
    matcher = HungarianMatcher()
    monkeypatch.setattr(matcher, "cost_matrices", lambda logits, masks, targets: costs)
    got = matcher(torch.zeros(4, 3, 4), torch.zeros(4, 3, 2, 2), [{}] * 4)
    assert [(r.tolist(), c.tolist()) for r, c in got] == [([0, 1], [1, 0]), ([], []), ([0], [0]), ([1, 2], [1, 0])]
    assert all(r.dtype == c.dtype == torch.long for r, c in got)
    costs[:] = [torch.tensor([[0.5]])]
    assert [(r.tolist(), c.tolist()) for r, c in matcher(torch.zeros(1, 1, 4), torch.zeros(1, 1, 2, 2), [{}])] == \
        [([0], [0])]
    costs[:] = []
    assert matcher(torch.zeros(0, 3, 4), torch.zeros(0, 3, 2, 2), []) == []


def test_uncertain_points_written_out():
    """``oversample_ratio * P`` uniform candidates, the ``importance_sample_ratio * P`` with the smallest |logit|
    first (most uncertain first), then fresh uniform points; all from the global generator, in that order."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 6, generator=g) * 4
    torch.manual_seed(11)
    got = uncertain_point_coords(logits, 8, oversample_ratio=2.0, importance_sample_ratio=0.5)
    torch.manual_seed(11)
    candidates = torch.rand(2, 16, 2)
    fresh = torch.rand(2, 4, 2)
    for n in range(2):
        score = [abs(bilinear(logits[n], *c.tolist())) for c in candidates[n]]
        order = sorted(range(16), key=lambda i: score[i])[:4]
        torch.testing.assert_close(got[n], torch.cat([candidates[n, order], fresh[n]]))
    torch.manual_seed(11)
    only_uncertain = uncertain_point_coords(logits, 4, oversample_ratio=3.0, importance_sample_ratio=1.0)
    assert only_uncertain.shape == (2, 4, 2)
    torch.manual_seed(12)
    default = uncertain_point_coords(logits, 4)  # 3x: 12 candidates, 0.75: 3 uncertain + 1 fresh
    torch.manual_seed(12)
    candidates, fresh = torch.rand(2, 12, 2), torch.rand(2, 1, 2)
    for n in range(2):
        score = [abs(bilinear(logits[n], *c.tolist())) for c in candidates[n]]
        order = sorted(range(12), key=lambda i: score[i])[:3]
        torch.testing.assert_close(default[n], torch.cat([candidates[n, order], fresh[n]]))


def test_points_and_indices_stay_on_the_device_of_the_inputs():
    """On the ``meta`` device (stands for CUDA): sampled points, target samples and fixed-matcher indices."""
    meta = torch.device("meta")
    assert uncertain_point_coords(torch.zeros(2, 4, 4, device=meta), 4).device == meta
    targets = [{"labels": torch.tensor([0, 2], device=meta), "masks": torch.zeros(2, 4, 4, device=meta)}]
    rows, cols = FixedMatcher(3)(torch.zeros(1, 3, 4, device=meta), torch.zeros(1, 3, 4, 4, device=meta), targets)[0]
    assert rows.device == cols.device == meta
    out = Mask2FormerCriterion._target_points(targets, [2], torch.zeros(2, dtype=torch.long, device=meta),
                                              torch.zeros(2, 5, 2, device=meta))
    assert out.device == meta and out.shape == (2, 5)
    # the matcher's costs (cost_matrices() minus its autocast switch, which has no meta backend), targets on the CPU
    cpu_targets = [{"labels": torch.tensor([0, 2]), "masks": torch.zeros(2, 8, 8, dtype=torch.bool)},
                   {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}]
    costs = HungarianMatcher(num_points=5)._costs(torch.zeros(2, 3, 4, device=meta),
                                                  torch.zeros(2, 3, 4, 4, device=meta), cpu_targets)
    assert [(c.device, c.dtype, tuple(c.shape)) for c in costs] == [(meta, torch.float32, (3, 2)),
                                                                    (meta, torch.float32, (3, 0))]


# ------------------------------------------------------------------------------------------ the criterion
# three images: classes {0, 2}, none (all ignore), {1}; labels 4x4
LABELS = torch.tensor([
    [[0, 0, 2, 2], [0, 255, 2, 2], [0, 0, 0, 2], [255, 0, 0, 0]],
    [[255] * 4] * 4,
    [[1, 1, 255, 1], [1, 255, 255, 1], [255, 255, 255, 255], [1, 1, 1, 1]],
])
PRESENT = [[0, 2], [], [1]]
UP = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # bilinear 2 -> 4, align_corners=False


def _outputs(seed: int, size: int, sets: int = 2) -> tuple[dict, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Prediction sets (aux first, final last) for 3 images, 3 queries, 3 classes + no-object."""
    g = torch.Generator().manual_seed(seed)
    pairs = [(torch.randn(3, 3, 4, generator=g), torch.randn(3, 3, size, size, generator=g) * 2) for _ in range(sets)]
    out = {"pred_logits": pairs[-1][0], "pred_masks": pairs[-1][1],
           "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in pairs[:-1]]}
    return out, pairs


def _class_loss(pairs, weights=(1.0, 1.0, 1.0, 0.1), norm="class_weights") -> float:
    total = 0.0
    for logits, _ in pairs:
        ce_sum = weight_sum = 0.0
        for b in range(3):
            for q in range(3):
                target = q if q in PRESENT[b] else 3  # FixedMatcher: query c predicts class c
                ce = -float(logits[b, q].log_softmax(-1)[target])
                ce_sum += weights[target] * ce
                weight_sum += weights[target]
        total += ce_sum / weight_sum if norm == "class_weights" else ce_sum / 9
    return total


def test_full_mask_losses_of_several_images_and_sets_written_out():
    crit = Mask2FormerCriterion(3, FixedMatcher(3), class_weight=1.5, mask_weight=4.0, dice_weight=3.0,
                                mask_loss_on_points=False)
    out, pairs = _outputs(0, 2)
    losses = crit(out, semantic_targets(LABELS, 3))
    mask = dice_sum = 0.0
    for _, masks in pairs:
        for b in range(3):
            for c in PRESENT[b]:
                up = (UP @ masks[b, c] @ UP.T).flatten().tolist()  # the 2x2 mask logits upsampled to 4x4
                tgt = (LABELS[b] == c).float().flatten().tolist()  # ignore pixels are background
                mask += sum(bce(a, t) for a, t in zip(up, tgt)) / 16
                dice_sum += dice(up, tgt)
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(1.5 * _class_loss(pairs)))
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(4.0 * mask / 3))  # 3 target masks in the batch
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(3.0 * dice_sum / 3))
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in losses.values())


def test_queries_class_loss_norm_is_the_mean_over_batch_and_queries():
    crit = Mask2FormerCriterion(3, FixedMatcher(3), no_object_weight=0.2, class_loss_norm="queries",
                                mask_loss_on_points=False)
    out, pairs = _outputs(1, 2, sets=3)
    losses = crit(out, semantic_targets(LABELS, 3))
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(2.0 * _class_loss(pairs, (1, 1, 1, 0.2), "queries")))
    crit = Mask2FormerCriterion(3, FixedMatcher(3), no_object_weight=0.2, mask_loss_on_points=False)
    torch.testing.assert_close(crit(out, semantic_targets(LABELS, 3))["loss_cls"],
                               torch.tensor(2.0 * _class_loss(pairs, (1, 1, 1, 0.2))))


def _pixel_centre_points(n: int, p: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, size, (n, p, 2), generator=g)  # (x, y) pixel indices
    return pixels, (pixels + 0.5) / size


def test_point_losses_read_each_match_at_its_own_points(monkeypatch):
    """Points mode with the importance sampler replaced by pixel-centre points (so a sample is the pixel's value):
    each matched prediction and its target mask are read at that match's own points."""
    crit = Mask2FormerCriterion(3, FixedMatcher(3), num_points=5, oversample_ratio=2.5, importance_sample_ratio=0.6)
    out, pairs = _outputs(2, 4)
    pixels, coords = _pixel_centre_points(6, 5, 4, seed=3)  # 2 sets x 3 matches, 5 points each
    calls = []

    def fixed_points(src, num_points, oversample_ratio, importance_sample_ratio):
        calls.append((src.clone(), num_points, oversample_ratio, importance_sample_ratio))
        return coords

    monkeypatch.setattr(criterion_module, "uncertain_point_coords", fixed_points)
    losses = crit(out, semantic_targets(LABELS, 3))
    (src, *args), = calls
    assert args == [5, 2.5, 0.6]
    matches = [(s, b, c) for s in range(2) for b in range(3) for c in PRESENT[b]]  # (set, image) order
    torch.testing.assert_close(src, torch.stack([pairs[s][1][b, c] for s, b, c in matches]))
    mask = dice_sum = 0.0
    for row, (s, b, c) in enumerate(matches):
        pred = [float(pairs[s][1][b, c, y, x]) for x, y in pixels[row].tolist()]
        tgt = [float(LABELS[b, y, x] == c) for x, y in pixels[row].tolist()]
        mask += sum(bce(a, t) for a, t in zip(pred, tgt)) / 5
        dice_sum += dice(pred, tgt)
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(5.0 * mask / 3))
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(5.0 * dice_sum / 3))


def test_the_final_set_alone_without_aux_outputs():
    crit = Mask2FormerCriterion(3, FixedMatcher(3), mask_loss_on_points=False)
    out, pairs = _outputs(4, 2, sets=1)
    del out["aux_outputs"]
    assert len(Mask2FormerCriterion.prediction_sets(out)) == 1
    losses = crit(out, semantic_targets(LABELS, 3))
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(2.0 * _class_loss(pairs)))


def test_a_batch_without_targets_has_the_class_loss_and_zero_mask_losses():
    crit = Mask2FormerCriterion(3, FixedMatcher(3), mask_loss_on_points=False)
    out, pairs = _outputs(9, 2)
    losses = crit(out, semantic_targets(torch.full((3, 4, 4), 255), 3))
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}
    # every query is no-object: the weighted mean over the 9 queries of a set is the plain mean
    expected = sum(float(-(logits.log_softmax(-1)[:, :, 3]).mean()) for logits, _ in pairs)
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(2.0 * expected))
    assert losses["loss_mask"].item() == losses["loss_dice"].item() == 0.0


def test_ddp_mask_count_is_the_mean_over_ranks_at_least_one(monkeypatch):
    """Under DDP the mask losses divide by the all-reduced target count / world size (at least 1); simulated: the
    other rank holds ``other`` target masks."""
    crit = Mask2FormerCriterion(3, FixedMatcher(3), mask_loss_on_points=False)
    out, pairs = _outputs(5, 2, sets=1)
    local = crit(out, semantic_targets(LABELS, 3))  # 3 masks here
    for other, divisor in [(5, 4.0), (0, 1.5)]:
        fake = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 2,
                               all_reduce=lambda t, o=other: t.add_(o))
        monkeypatch.setattr(criterion_module, "dist", fake)
        losses = crit(out, semantic_targets(LABELS, 3))
        for key in ("loss_mask", "loss_dice"):
            torch.testing.assert_close(losses[key].reshape(()), local[key] * 3 / divisor)  # a [1] tensor there
        torch.testing.assert_close(losses["loss_cls"], local["loss_cls"])
    one = semantic_targets(LABELS[2:], 3)  # one mask here, none on the other rank: (1 + 0) / 2 clamped to 1
    out1 = {"pred_logits": out["pred_logits"][2:], "pred_masks": out["pred_masks"][2:]}
    fake = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 2,
                           all_reduce=lambda t: t)
    monkeypatch.setattr(criterion_module, "dist", fake)
    clamped = crit(out1, one)
    monkeypatch.undo()
    torch.testing.assert_close(clamped["loss_mask"].reshape(()), crit(out1, one)["loss_mask"])


def test_losses_are_float32_under_autocast():
    """The criterion switches autocast off: under a bf16 autocast region fp32 inputs give the fp32 losses exactly,
    and bf16 predictions give fp32 losses."""
    crit = Mask2FormerCriterion(3, num_points=16)
    out, _ = _outputs(6, 4, sets=1)
    targets = semantic_targets(LABELS, 3)
    torch.manual_seed(0)
    plain = crit(out, targets)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = crit(out, targets)
    half = {"pred_logits": out["pred_logits"].bfloat16(), "pred_masks": out["pred_masks"].bfloat16(),
            "aux_outputs": []}
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_half = crit(half, targets)
    for key in plain:
        torch.testing.assert_close(auto[key], plain[key], rtol=1e-6, atol=1e-7)
        assert auto_half[key].dtype == torch.float32
        torch.testing.assert_close(auto_half[key], plain[key], rtol=0.05, atol=0.05)


def test_criterion_runs_on_the_device_of_its_predictions(monkeypatch):
    """On the ``meta`` device (stands for CUDA), with the targets on the CPU: every index and target goes to the
    predictions' device, the DDP mask count included (NCCL reduces device tensors only)."""
    meta = torch.device("meta")
    crit = Mask2FormerCriterion(3, FixedMatcher(3), num_points=4).to(meta)
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.zeros(2, 4, 4, dtype=torch.bool)},
               {"labels": torch.tensor([1]), "masks": torch.ones(1, 4, 4, dtype=torch.bool)}]
    out = {"pred_logits": torch.zeros(2, 3, 4, device=meta), "pred_masks": torch.zeros(2, 3, 4, 4, device=meta)}
    reduced = []
    fake = SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, get_world_size=lambda: 2,
                           all_reduce=lambda t: reduced.append(t.device))
    for distributed in (False, True):
        if distributed:
            monkeypatch.setattr(criterion_module, "dist", fake)
        losses = crit._forward(out, targets)  # forward() minus its autocast switch, which has no meta backend
        assert {k: (v.device, v.dtype) for k, v in losses.items()} == {k: (meta, torch.float32) for k in losses}
    assert reduced == [meta]


class _GivenMatcher:
    """Returns the (queries, targets) pairs it is given, per image (the same for every prediction set)."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __call__(self, logits, masks, targets):
        return [tuple(torch.tensor(v, dtype=torch.long) for v in self.pairs[i % len(self.pairs)])
                for i in range(len(targets))]


def test_point_losses_follow_a_permuted_assignment(monkeypatch):
    """Queries matched to targets out of order (image 0: query 0 <- target 1 (class 2), query 2 <- target 0 (class 0);
    image 2: query 1 <- class 1): class targets, predictions and target samples all follow the assignment."""
    assignment = [([0, 2], [1, 0]), ([], []), ([1], [0])]
    crit = Mask2FormerCriterion(3, _GivenMatcher(assignment), num_points=4)
    out, pairs = _outputs(7, 4)
    pixels, coords = _pixel_centre_points(6, 4, 4, seed=8)
    monkeypatch.setattr(criterion_module, "uncertain_point_coords", lambda src, *args: coords)
    losses = crit(out, semantic_targets(LABELS, 3))
    matches = [(s, b, q, PRESENT[b][j]) for s in range(2) for b in range(3) for q, j in zip(*assignment[b])]
    mask = dice_sum = 0.0
    for row, (s, b, q, c) in enumerate(matches):
        pred = [float(pairs[s][1][b, q, y, x]) for x, y in pixels[row].tolist()]
        tgt = [float(LABELS[b, y, x] == c) for x, y in pixels[row].tolist()]
        mask += sum(bce(a, t) for a, t in zip(pred, tgt)) / 4
        dice_sum += dice(pred, tgt)
    cls = 0.0
    weights = (1.0, 1.0, 1.0, 0.1)
    for s, (logits, _) in enumerate(pairs):
        ce_sum = weight_sum = 0.0
        for b in range(3):
            for q in range(3):
                target = next((c for s2, b2, q2, c in matches if (s2, b2, q2) == (s, b, q)), 3)
                ce_sum += weights[target] * -float(logits[b, q].log_softmax(-1)[target])
                weight_sum += weights[target]
        cls += ce_sum / weight_sum
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(2.0 * cls))
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(5.0 * mask / 3))
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(5.0 * dice_sum / 3))
