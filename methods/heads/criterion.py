"""Mask2Former set criterion: class CE + mask BCE + naive Dice, deep-supervised over all prediction sets.

Targets are per-image dicts (labels LongTensor[K], masks Tensor[K, H, W]); ``semantic_targets``
builds them from a semantic label map (one binary mask per class present; ignore pixels belong
to no mask, so they count as background for every mask, as in mmseg's Mask2Former).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher, point_sample

__all__ = ["CLASS_LOSS_NORMS", "Mask2FormerCriterion", "dice_loss", "sigmoid_bce_loss", "semantic_targets", "uncertain_point_coords"]


def semantic_targets(labels: Tensor, num_classes: int, ignore_index: int = 255) -> list[dict[str, Tensor]]:
    """Semantic label maps [B, H, W] -> per image dict(labels=LongTensor[K] (sorted class ids),
    masks=BoolTensor[K, H, W]). Uses one host sync for the whole batch.

    Raises ValueError for values outside [0, num_classes) that are not ``ignore_index``.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W] train ids, got shape {tuple(labels.shape)}")
    batch = labels.shape[0]
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes)
    offset = (torch.arange(batch, device=labels.device) * num_classes)[:, None, None]
    slot = torch.where(valid, labels + offset,
                       torch.where(labels == ignore_index, batch * num_classes, batch * num_classes + 1))
    counts = torch.bincount(slot.flatten(), minlength=batch * num_classes + 2).cpu()  # the one host sync
    if counts[-1] > 0:
        bad = sorted(set(labels[~valid & (labels != ignore_index)].unique().tolist()))[:10]
        raise ValueError(f"labels hold values {bad} outside the train ids 0..{num_classes - 1} and ignore "
                         f"{ignore_index}; convert the dataset's ids to train ids (datasets.labels) first")
    present = counts[: batch * num_classes].view(batch, num_classes) > 0
    targets = []
    for b in range(batch):
        classes = present[b].nonzero().flatten().to(labels.device)
        targets.append({"labels": classes, "masks": labels[b][None] == classes[:, None, None]})
    return targets


def dice_loss(pred_logits: Tensor, targets: Tensor, num_masks: float, eps: float = 1.0) -> Tensor:
    """Naive Dice on sigmoid(pred) per row, summed over rows / num_masks.

    pred_logits, targets: [N, P]; loss_n = 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps).
    """
    prob = pred_logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + eps) / (denominator + eps)).sum() / num_masks


def sigmoid_bce_loss(pred_logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sigmoid BCE averaged over the P points of each row, summed over rows / num_masks."""
    loss = F.binary_cross_entropy_with_logits(pred_logits, targets, reduction="none")
    return loss.mean(-1).sum() / num_masks


def uncertain_point_coords(mask_logits: Tensor, num_points: int, oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> Tensor:
    """PointRend importance sampling: [N, h, w] logits -> [N, num_points, 2] (x, y) in [0, 1].

    Draw ``oversample_ratio * num_points`` uniform points, keep the
    ``importance_sample_ratio * num_points`` most uncertain (uncertainty = -|logit|), and fill up
    with fresh uniform points.
    """
    with torch.no_grad():  # a context, not a decorator: mutmut skips decorated functions
        n = mask_logits.shape[0]
        num_sampled = int(num_points * oversample_ratio)
        coords = torch.rand(n, num_sampled, 2, device=mask_logits.device)
        uncertainty = -point_sample(mask_logits.float(), coords).abs()
        num_uncertain = int(importance_sample_ratio * num_points)
        num_random = num_points - num_uncertain
        idx = uncertainty.topk(num_uncertain, dim=1).indices
        picked = coords.gather(1, idx[..., None].expand(-1, -1, 2))
        if num_random > 0:
            picked = torch.cat([picked, torch.rand(n, num_random, 2, device=mask_logits.device)], dim=1)
        return picked


CLASS_LOSS_NORMS = ("class_weights", "queries")


class Mask2FormerCriterion(nn.Module):
    """Hungarian-matched set loss of Mask2Former, summed over the deep-supervision sets.

    Per prediction set: class CE over all queries (unmatched -> no-object, whose class weight is
    ``no_object_weight``), normalised by the sum of the class weights (``class_loss_norm="class_weights"``,
    mmdet's ``avg_factor``) or averaged over batch x queries (``"queries"``: Vireo's head calls the loss
    without ``avg_factor``); and for matched queries a
    sigmoid BCE and a naive Dice (eps 1), both on ``num_points`` importance-sampled points
    (``mask_loss_on_points=True``) or on the masks bilinearly upsampled to the target size
    (``False``, MaskFormer style), normalised by the number of target masks in the batch.
    Each term is multiplied by its weight; the returned values are summed over the sets.
    """

    def __init__(self, num_classes: int, matcher=None, *, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 mask_loss_on_points: bool = True, class_loss_norm: str = "class_weights"):
        super().__init__()
        if class_loss_norm not in CLASS_LOSS_NORMS:
            raise ValueError(f"class_loss_norm={class_loss_norm!r}: expected one of {CLASS_LOSS_NORMS}")
        self.class_loss_norm = class_loss_norm
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher(
            class_weight, mask_weight, dice_weight, num_points)
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.mask_loss_on_points = mask_loss_on_points
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("empty_weight", weights, persistent=False)

    @staticmethod
    def prediction_sets(outputs: dict) -> list[dict]:
        """The deep-supervision sets: aux_outputs (in order) then the final prediction."""
        return [*outputs.get("aux_outputs", []), {"pred_logits": outputs["pred_logits"],
                                                  "pred_masks": outputs["pred_masks"]}]

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """outputs: the head's dict (pred_logits, pred_masks, aux_outputs); targets: one dict per image."""
        # Losses and matching run in fp32 even inside an autocast region.
        with torch.autocast(outputs["pred_logits"].device.type, enabled=False):
            return self._forward(outputs, targets)

    def _forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        sets = self.prediction_sets(outputs)
        num_sets, batch = len(sets), outputs["pred_logits"].shape[0]
        if len(targets) != batch:
            raise ValueError(f"{batch} predictions but {len(targets)} targets")
        logits = torch.cat([s["pred_logits"] for s in sets]).float()  # [S*B, Q, C+1]
        masks = torch.cat([s["pred_masks"] for s in sets])  # [S*B, Q, h, w]
        device = logits.device
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"class logits have {logits.shape[-1]} entries, expected num_classes+1 = "
                             f"{self.num_classes + 1}")
        targets = [{"labels": t["labels"].to(device), "masks": t["masks"].to(device, torch.float32)}
                   for t in targets]
        all_targets = targets * num_sets  # item i = set i // B, image i % B
        indices = self.matcher(logits.detach(), masks.detach(), all_targets)

        num_masks = float(sum(len(t["labels"]) for t in targets))
        if dist.is_available() and dist.is_initialized():
            num = torch.tensor([num_masks], device=device)
            dist.all_reduce(num)
            num_masks = num / dist.get_world_size()
            num_masks = num_masks.clamp(min=1.0)
        else:
            num_masks = max(num_masks, 1.0)

        # Indices to the device in one go (async copies; the matcher already synced).
        offsets = [0]
        for t in targets:
            offsets.append(offsets[-1] + len(t["labels"]))
        counts = [q.numel() for q, _ in indices]
        item_idx = torch.repeat_interleave(torch.arange(len(indices)), torch.tensor(counts))
        item_idx = item_idx.to(device, non_blocking=True)
        query_idx = torch.cat([q.to(device, non_blocking=True) for q, _ in indices])
        tgt_idx = torch.cat([j.to(device, non_blocking=True) for _, j in indices])  # within its image
        gt_idx = torch.cat([(j + offsets[i % batch]).to(device, non_blocking=True)
                            for i, (_, j) in enumerate(indices)])  # into the batch's concatenated targets
        matched_labels = torch.cat([t["labels"] for t in targets])[gt_idx]

        # Class loss: weighted CE, normalised per set by the sum of the targets' class weights (or the count).
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=device)
        target_classes[item_idx, query_idx] = matched_labels
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.empty_weight, reduction="none")
        per_set = ce.view(num_sets, -1)
        if self.class_loss_norm == "class_weights":
            per_set = per_set.sum(1) / self.empty_weight[target_classes].view(num_sets, -1).sum(1)
        else:  # "queries": mean over batch x queries
            per_set = per_set.mean(1)
        loss_cls = per_set.sum() * self.class_weight

        if item_idx.numel() == 0:
            zero = masks.sum() * 0.0
            return {"loss_cls": loss_cls, "loss_mask": zero, "loss_dice": zero}

        src = masks[item_idx, query_idx].float()  # [N, h, w], in (item, match) order
        if self.mask_loss_on_points:
            coords = uncertain_point_coords(src, self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            src_flat = point_sample(src, coords)
            tgt_flat = self._target_points(all_targets, counts, tgt_idx, coords)
        else:
            size = targets[0]["masks"].shape[-2:]
            src_flat = F.interpolate(src[:, None], size=size, mode="bilinear", align_corners=False).flatten(1)
            tgt_flat = torch.cat([t["masks"] for t in targets])[gt_idx].flatten(1)
        loss_mask = sigmoid_bce_loss(src_flat, tgt_flat, num_masks) * self.mask_weight
        loss_dice = dice_loss(src_flat, tgt_flat, num_masks) * self.dice_weight
        return {"loss_cls": loss_cls, "loss_mask": loss_mask, "loss_dice": loss_dice}

    @staticmethod
    def _target_points(all_targets: list[dict], counts: list[int], tgt_idx: Tensor, coords: Tensor) -> Tensor:
        """Sample each matched target mask at its own prediction's points, without copying masks.

        Item i's matches are rows ``sum(counts[:i])`` onwards; ``tgt_idx`` indexes its image's masks.
        """
        with torch.no_grad():
            out = torch.empty(coords.shape[:2], device=coords.device)
            start = 0
            for target, k in zip(all_targets, counts):
                if k == 0:
                    continue
                idx = tgt_idx[start:start + k]
                gt_masks = target["masks"]
                per_gt = coords.new_zeros((gt_masks.shape[0], coords.shape[1], 2))
                per_gt[idx] = coords[start:start + k]
                out[start:start + k] = point_sample(gt_masks, per_gt)[idx]
                start += k
            return out
