"""Hand-checked pieces of the Mask2Former head: deformable attention, matchers, losses, targets."""

import math

import pytest
import torch

from methods.heads import (
    FixedMatcher,
    HungarianMatcher,
    Mask2FormerCriterion,
    MultiScaleDeformableAttention,
    dice_loss,
    ms_deform_attn_sample,
    semantic_inference,
    semantic_targets,
    sigmoid_bce_loss,
    sine_positional_encoding,
    uncertain_point_coords,
)
from methods.heads.pixel_decoder import reference_points


def bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Direct bilinear sample of img [D, H, W] at normalised (x, y), pixel centres at (i+0.5)/size,
    zero outside (the align_corners=False convention)."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
        for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * img[:, yi, xi]
    return out


def test_sine_positional_encoding_values():
    pos = sine_positional_encoding(2, 3, 4)
    assert pos.shape == (8, 2, 3)
    y = 2 / (2 + 1e-6) * 2 * math.pi  # row 1 (second row) normalised
    x = 1 / (3 + 1e-6) * 2 * math.pi  # column 0
    expected_y = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100)]
    expected_x = [math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    torch.testing.assert_close(pos[:, 1, 0], torch.tensor(expected_y + expected_x), atol=1e-5, rtol=0)


def test_deformable_attention_zero_offsets_uniform_weights_is_mean_of_bilinear_samples():
    torch.manual_seed(0)
    dim, heads, shapes = 8, 2, [(2, 2), (3, 4), (5, 3)]
    attn = MultiScaleDeformableAttention(dim, heads, num_levels=3, num_points=2)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()  # weight is zero-initialised: offsets are exactly 0
    n = sum(h * w for h, w in shapes)
    value = torch.randn(1, n, dim)
    query = torch.randn(1, n, dim)
    ref = reference_points(shapes)
    out = attn(query, ref[None], value, shapes)

    projected = attn.value_proj(value)[0]
    maps = [m.T.reshape(dim, h, w) for m, (h, w) in zip(projected.split([h * w for h, w in shapes]), shapes)]
    for q in [0, 3, 5, n - 1]:
        x, y = ref[q].tolist()
        mean = sum(bilinear(m, x, y) for m in maps) / len(maps)  # uniform over levels x points
        torch.testing.assert_close(out[0, q], attn.output_proj(mean), atol=1e-5, rtol=1e-5)
    # a query on its own level's pixel centre reads that pixel exactly
    torch.testing.assert_close(bilinear(maps[0], *ref[0].tolist()), maps[0][:, 0, 0])


def test_ms_deform_attn_sample_matches_naive_loop():
    torch.manual_seed(1)
    shapes, heads, d, nq, points = [(3, 2), (2, 5)], 2, 3, 4, 3
    value = torch.randn(1, sum(h * w for h, w in shapes), heads, d)
    loc = torch.rand(1, nq, heads, len(shapes), points, 2) * 1.4 - 0.2  # some points fall outside
    weights = torch.rand(1, nq, heads, len(shapes), points)
    out = ms_deform_attn_sample(value, shapes, loc, weights)
    levels = value[0].split([h * w for h, w in shapes])
    for q in range(nq):
        for m in range(heads):
            acc = torch.zeros(d)
            for lvl, (h, w) in enumerate(shapes):
                img = levels[lvl][:, m].T.reshape(d, h, w)
                for p in range(points):
                    acc += weights[0, q, m, lvl, p] * bilinear(img, *loc[0, q, m, lvl, p].tolist())
            torch.testing.assert_close(out[0, q, m * d:(m + 1) * d], acc, atol=1e-5, rtol=1e-5)


def _stripe_targets(labels, size=16):
    k = len(labels)
    masks = torch.zeros(k, size, size, dtype=torch.bool)
    edges = [round(i * size / k) for i in range(k + 1)]
    for j in range(k):
        masks[j, edges[j]:edges[j + 1]] = True
    return {"labels": torch.tensor(labels), "masks": masks}


def test_hungarian_matcher_recovers_permutation():
    torch.manual_seed(0)
    num_classes, queries = 5, 6
    target = _stripe_targets([0, 2, 4])
    perm = [4, 0, 3]  # target j is predicted by query perm[j]
    logits = torch.zeros(1, queries, num_classes + 1)
    logits[0, :, -1] = 5.0
    masks = torch.full((1, queries, 8, 8), -10.0)
    small = torch.nn.functional.interpolate(target["masks"][None].float(), size=(8, 8))[0]
    for j, q in enumerate(perm):
        logits[0, q] = 0.0
        logits[0, q, target["labels"][j]] = 5.0
        masks[0, q] = torch.where(small[j] > 0.5, 10.0, -10.0)
    # a decoy with the right class but an empty mask must lose against the true mask
    logits[0, 1, 2] = 5.0
    rows, cols = HungarianMatcher(num_points=500)(logits, masks, [target])[0]
    assigned = dict(zip(cols.tolist(), rows.tolist()))
    assert assigned == {0: 4, 1: 0, 2: 3}


def test_hungarian_matcher_empty_target_and_cost_terms():
    matcher = HungarianMatcher(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, num_points=64)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 4, 4)}
    rows, cols = matcher(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4, 4), [empty])[0]
    assert rows.numel() == 0 and cols.numel() == 0
    # constant logits 0 vs an empty mask: BCE = ln 2, dice = 1 - 1 / (0.5 P + 1), class prob 1/4
    # (an all-ones mask would not do: zero padding lowers samples within half a pixel of the border)
    blank = {"labels": torch.tensor([1]), "masks": torch.zeros(1, 4, 4)}
    cost = matcher.cost_matrices(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4, 4), [blank])[0]
    expected = 2 * -0.25 + 5 * math.log(2) + 5 * (1 - 1 / 33)
    torch.testing.assert_close(cost, torch.full((3, 1), expected), atol=1e-5, rtol=1e-5)


def test_fixed_matcher_identity_on_present_classes():
    target = _stripe_targets([1, 3])
    rows, cols = FixedMatcher(5)(torch.zeros(1, 5, 6), torch.zeros(1, 5, 4, 4), [target])[0]
    assert rows.tolist() == [1, 3] and cols.tolist() == [0, 1]
    with pytest.raises(ValueError, match="one query per class"):
        FixedMatcher(5)(torch.zeros(1, 4, 6), torch.zeros(1, 4, 4, 4), [target])


def test_dice_and_bce_hand_values():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.sigmoid(torch.tensor(10.0)).item()
    dice_row2 = 1 - (2 * p + 1) / (p + (1 - p) + 1 + 1)
    torch.testing.assert_close(dice_loss(logits, target, num_masks=2.0), torch.tensor((1 / 3 + dice_row2) / 2))
    bce_row2 = -math.log(p)  # both points: -log(sigmoid(10))
    torch.testing.assert_close(sigmoid_bce_loss(logits, target, num_masks=2.0),
                               torch.tensor((math.log(2) + bce_row2) / 2))


def _single_set(logits, masks):
    return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def test_criterion_class_loss_uses_no_object_weight_and_full_mask_losses():
    # 2 classes, 2 queries, fixed matching: query 0 <- class 0, query 1 is no-object (weight 0.1)
    crit = Mask2FormerCriterion(2, FixedMatcher(2), mask_loss_on_points=False)
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    masks = torch.zeros(1, 2, 2, 2)
    labels = torch.full((1, 4, 4), 255)
    labels[0, :2] = 0  # 8 pixels of class 0, the rest ignored
    losses = crit(_single_set(logits, masks), semantic_targets(labels, 2))
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = math.log(3)
    expected_cls = 2.0 * (ce0 + 0.1 * ce1) / 1.1
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(expected_cls))
    torch.testing.assert_close(losses["loss_mask"], torch.tensor(5 * math.log(2)))
    torch.testing.assert_close(losses["loss_dice"], torch.tensor(5 * (1 - 9 / 17)))


def test_criterion_point_losses_and_deep_supervision_sum():
    torch.manual_seed(0)
    crit = Mask2FormerCriterion(2, num_points=100)  # Hungarian
    logits = torch.zeros(2, 3, 3)
    masks = torch.zeros(2, 3, 4, 4)
    # hand-made targets with empty masks, so that point samples of the target are exactly 0
    targets = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 8, 8)} for _ in range(2)]
    out = _single_set(logits, masks)
    single = crit(out, targets)
    torch.testing.assert_close(single["loss_mask"], torch.tensor(5 * math.log(2)))
    torch.testing.assert_close(single["loss_dice"], torch.tensor(5 * (1 - 1 / 51)))
    # each image: 1 query matched to class 1 (w 1), 2 no-object (w 0.1); all CE = ln 3
    torch.testing.assert_close(single["loss_cls"], torch.tensor(2 * math.log(3)))
    out["aux_outputs"] = [{"pred_logits": logits, "pred_masks": masks}] * 3
    deep = crit(out, targets)
    for k in single:
        torch.testing.assert_close(deep[k], 4 * single[k])


def test_criterion_without_targets_is_finite_and_class_only():
    crit = Mask2FormerCriterion(3, num_points=16)
    logits = torch.randn(1, 4, 4, requires_grad=True)
    masks = torch.randn(1, 4, 4, 4, requires_grad=True)
    losses = crit(_single_set(logits, masks), semantic_targets(torch.full((1, 8, 8), 255), 3))
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all()


def test_uncertain_point_coords_prefers_boundary():
    torch.manual_seed(0)
    logits = torch.full((1, 32, 32), 20.0)
    logits[0, :, :16] = 0.0  # left half uncertain (|logit| 0), right half certain
    coords = uncertain_point_coords(logits, 40, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert coords.shape == (1, 40, 2)
    # the 30 importance points are the most uncertain of 120 uniform candidates (~60 in the left half)
    assert (coords[0, :30, 0] < 16.5 / 32).all()
    assert ((coords >= 0) & (coords <= 1)).all()


def test_semantic_targets_with_ignore():
    labels = torch.tensor([[[0, 0, 255], [2, 2, 255]], [[255, 255, 255], [255, 255, 255]]])
    targets = semantic_targets(labels, num_classes=3)
    assert targets[0]["labels"].tolist() == [0, 2]
    assert targets[0]["masks"].tolist() == [[[True, True, False], [False, False, False]],
                                            [[False, False, False], [True, True, False]]]
    assert targets[1]["labels"].numel() == 0 and targets[1]["masks"].shape == (0, 2, 3)
    with pytest.raises(ValueError, match="outside the train ids"):
        semantic_targets(torch.tensor([[[0, 7]]]), num_classes=3)


def test_semantic_inference_hand_case():
    logits = torch.tensor([[[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]]])  # softmax [.5,.25,.25], [1/3]*3
    masks = torch.tensor([[[[0.0]], [[math.log(3)]]]])  # sigmoid 0.5 and 0.75
    out = semantic_inference(logits, masks)
    assert out.shape == (1, 2, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5, 0.375]))
