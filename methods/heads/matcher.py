"""Query-to-target assignment for the Mask2Former set loss.

Both matchers are called as ``matcher(pred_logits, pred_masks, targets)`` with
pred_logits [N, Q, C+1], pred_masks [N, Q, h, w] and ``targets`` a list of N dicts
(labels LongTensor[K], masks Tensor[K, H, W] at any resolution). They return N pairs
(query_idx LongTensor[k], target_idx LongTensor[k]): query ``query_idx[j]`` predicts target
``target_idx[j]``; unassigned queries are "no object".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["FixedMatcher", "HungarianMatcher", "point_sample", "mask_cost_bce", "mask_cost_dice"]


def point_sample(masks: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of masks at normalised (x, y) points in [0, 1] (align_corners=False).

    masks [N, H, W] with coords [N, P, 2] -> [N, P] (own points per mask), or
    coords [P, 2] -> [N, P] (the same points for every mask).
    """
    if coords.dim() == 2:
        grid = (2 * coords - 1).to(masks.dtype)[None, None]  # [1, 1, P, 2]
        return F.grid_sample(masks[None], grid, mode="bilinear", align_corners=False)[0, :, 0]
    grid = (2 * coords - 1).to(masks.dtype)[:, :, None]  # [N, P, 1, 2]
    return F.grid_sample(masks[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def mask_cost_bce(pred: Tensor, target: Tensor) -> Tensor:
    """Pairwise mean sigmoid-BCE: pred logits [Q, P], target [K, P] in [0, 1] -> [Q, K]."""
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    return (pos @ target.T + neg @ (1 - target).T) / pred.shape[1]


def mask_cost_dice(pred: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Pairwise naive Dice: 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps), p = sigmoid(pred) -> [Q, K]."""
    prob = pred.sigmoid()
    numerator = 2 * prob @ target.T
    denominator = prob.sum(-1)[:, None] + target.sum(-1)[None, :]
    return 1 - (numerator + eps) / (denominator + eps)


class HungarianMatcher:
    """Mask2Former's bipartite matcher (scipy ``linear_sum_assignment``).

    Cost = class_weight * (-softmax prob of the target class) + mask_weight * BCE + dice_weight * Dice,
    the mask terms on ``num_points`` uniformly random points shared by the predictions and the
    targets of one image. All cost matrices of a call go to the CPU in a single transfer.
    """

    def __init__(self, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 num_points: int = 12544):
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points = num_points

    def cost_matrices(self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict]) -> list[Tensor]:
        """Per item, the [Q, K] matching cost (on the predictions' device, fp32 even under autocast)."""
        # no_grad as a context, not a decorator: mutmut skips decorated functions (the assignment in __call__
        # needs no grad mode: its costs come from here)
        with torch.no_grad(), torch.autocast(pred_logits.device.type, enabled=False):
            return self._costs(pred_logits, pred_masks, targets)

    def _costs(self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict]) -> list[Tensor]:
        costs = []
        for logits, masks, target in zip(pred_logits, pred_masks, targets):
            labels = target["labels"]
            if labels.numel() == 0:
                costs.append(logits.new_zeros((logits.shape[0], 0), dtype=torch.float32))
                continue
            coords = torch.rand(self.num_points, 2, device=masks.device)
            pred_pts = point_sample(masks.float(), coords)  # [Q, P]
            tgt_pts = point_sample(target["masks"].to(masks.device, torch.float32), coords)  # [K, P]
            cost_class = -logits.float().softmax(-1)[:, labels]
            cost = (self.class_weight * cost_class + self.mask_weight * mask_cost_bce(pred_pts, tgt_pts)
                    + self.dice_weight * mask_cost_dice(pred_pts, tgt_pts))
            costs.append(cost)
        return costs

    def __call__(self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{pred_logits.shape[0]} predictions but {len(targets)} targets")
        costs = self.cost_matrices(pred_logits, pred_masks, targets)
        flat = torch.cat([c.flatten() for c in costs]).cpu() if costs else torch.zeros(0)  # the one host sync
        indices, start = [], 0
        for cost in costs:
            n = cost.numel()
            block = flat[start:start + n].view(cost.shape).numpy()
            start += n
            if n == 0:
                empty = torch.zeros(0, dtype=torch.long)
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(block)
            indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return indices


class FixedMatcher:
    """tqdm's identity assignment: query i always predicts class i (needs num_queries == num_classes).

    Every target of class c goes to query c; no host sync (indices stay on the labels' device).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, pred_logits: Tensor, pred_masks: Tensor, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        if pred_logits.shape[1] != self.num_classes:
            raise ValueError(f"FixedMatcher needs one query per class: {pred_logits.shape[1]} queries, "
                             f"{self.num_classes} classes")
        out = []
        for target in targets:
            labels = target["labels"]
            out.append((labels.long(), torch.arange(labels.numel(), device=labels.device)))
        return out
