"""The Mask2Former head shared by Rein, SET, Vireo, VLTSeg and tqdm (shared/specs/methods.md §0).

Pure PyTorch. ``Mask2FormerHead(cfg)(features)`` maps 4 backbone maps (strides 4, 8, 16, 32) to
class logits [B, Q, C+1] and mask logits [B, Q, H/4, W/4] for the final decoder layer, plus the
earlier prediction sets under ``aux_outputs`` (deep supervision). Extension points:

- ``forward(features, *, query_content=None, query_pos=None, text_context=None)``: per-call
  [B, Q, D] (or [Q, D]) query features / query positional embeddings replace the learned tables
  (Rein: pos = Q, content = Linear(Q); Vireo adds anchors to pos). ``text_context`` [B, T, text_dim]
  feeds tqdm's pixel->text cross-attention (``cfg.text_cross_attention_dim``).
- ``head.class_predictor``: any module [B, Q, D] -> [B, Q, C+1]; replace it to classify by text.
- ``head.remove_learned_queries()``: drops ``query_feat`` / ``query_embed`` (Rein deletes both).
- ``matcher`` constructor argument: ``HungarianMatcher`` (default) or ``FixedMatcher`` (tqdm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .criterion import Mask2FormerCriterion, semantic_targets
from .matcher import FixedMatcher, HungarianMatcher
from .pixel_decoder import MSDeformAttnPixelDecoder, MultiheadAttention, sine_positional_encoding

__all__ = ["Mask2FormerConfig", "Mask2FormerHead", "MaskedAttentionDecoderLayer", "semantic_inference"]


@dataclass(frozen=True)
class Mask2FormerConfig:
    """Sizes and loss settings of the head (defaults = the mmdet/mmseg config of methods.md §0)."""

    in_channels: tuple[int, ...] = (1024, 1024, 1024, 1024)  # 4 maps at strides 4, 8, 16, 32
    hidden_dim: int = 256
    num_queries: int = 100
    num_classes: int = 19
    num_heads: int = 8
    pixel_decoder_layers: int = 6  # deformable encoder over the 3 coarsest levels
    pixel_decoder_ffn: int = 1024
    deform_points: int = 4
    decoder_layers: int = 9
    decoder_ffn: int = 2048
    train_num_points: int = 12544  # point-sampled losses / matching (PointRend importance sampling)
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    decoder_order: str = "cross_self_ffn"  # or "self_cross_ffn"
    text_cross_attention_dim: int | None = None  # tqdm pixel->text cross-attention (text feature dim)
    num_text_tokens: int = 19
    mask_loss_on_points: bool = True  # False: mask losses on full upsampled masks (Vireo)
    num_feature_levels: int = 3  # levels in the deformable encoder and the decoder loop

    def __post_init__(self):
        if self.decoder_order not in ("cross_self_ffn", "self_cross_ffn"):
            raise ValueError(f"decoder_order must be 'cross_self_ffn' or 'self_cross_ffn', got {self.decoder_order!r}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} not divisible by num_heads {self.num_heads}")


class MaskedAttentionDecoderLayer(nn.Module):
    """Mask2Former decoder layer (post-norm): masked cross-attn, norm, self-attn, norm, FFN, norm
    (``order='cross_self_ffn'``; ``'self_cross_ffn'`` swaps the two attentions)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, order: str = "cross_self_ffn"):
        super().__init__()
        self.order = order
        self.cross_attn = MultiheadAttention(dim, num_heads)
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def _cross(self, x: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor, mask: Tensor | None) -> Tensor:
        return x + self.cross_attn(x + query_pos, memory + memory_pos, memory, mask)

    def _self(self, x: Tensor, query_pos: Tensor) -> Tensor:
        q = x + query_pos
        return x + self.self_attn(q, q, x)

    def forward(self, x: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                attn_mask: Tensor | None = None) -> Tensor:
        """x, query_pos [B, Q, D]; memory [B, N, D]; memory_pos [1 or B, N, D];
        attn_mask bool [B, Q, N], True = may attend."""
        if self.order == "cross_self_ffn":
            x = self.norms[0](self._cross(x, query_pos, memory, memory_pos, attn_mask))
            x = self.norms[1](self._self(x, query_pos))
        else:
            x = self.norms[0](self._self(x, query_pos))
            x = self.norms[1](self._cross(x, query_pos, memory, memory_pos, attn_mask))
        return self.norms[2](x + self.ffn(x))


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Per class, sum over queries of softmax(class)[:, :, :C] x sigmoid(mask):
    [B, Q, C+1], [B, Q, h, w] -> [B, C, h, w].

    With ``size`` the mask logits are first upsampled (bilinear) to ``size``, then passed through the
    sigmoid, as mmseg's ``Mask2FormerHead.predict`` does -> [B, C, *size]. Without it the scores stay at
    the mask resolution (tqdm's mmseg-0.x head combines first and resizes the class maps afterwards)."""
    masks = pred_masks.float()
    if size is not None:
        masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
    probs = pred_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())


class Mask2FormerHead(nn.Module):
    """Mask2Former: pixel decoder + masked-attention transformer decoder + set criterion.

    Modules: ``pixel_decoder`` (MSDeformAttnPixelDecoder), ``level_embed`` [L, D],
    ``query_feat`` / ``query_embed`` (nn.Embedding [Q, D], or None after
    ``remove_learned_queries``), ``layers`` (decoder layers), ``decoder_norm``,
    ``class_predictor`` (Linear D -> C+1), ``mask_embed`` (3-layer MLP), ``criterion``.
    """

    def __init__(self, cfg: Mask2FormerConfig = Mask2FormerConfig(), matcher=None):
        super().__init__()
        self.cfg = cfg
        dim = cfg.hidden_dim
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            cfg.in_channels, dim, cfg.num_heads, cfg.pixel_decoder_layers, cfg.pixel_decoder_ffn,
            cfg.num_feature_levels, cfg.deform_points, cfg.text_cross_attention_dim, cfg.num_text_tokens)
        self.level_embed = nn.Parameter(torch.empty(cfg.num_feature_levels, dim))
        self.query_feat: nn.Embedding | None = nn.Embedding(cfg.num_queries, dim)
        self.query_embed: nn.Embedding | None = nn.Embedding(cfg.num_queries, dim)
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(dim, cfg.num_heads, cfg.decoder_ffn, cfg.decoder_order)
            for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_predictor: nn.Module = nn.Linear(dim, cfg.num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim),
                                        nn.ReLU(inplace=True), nn.Linear(dim, dim))
        if matcher is None:
            matcher = HungarianMatcher(cfg.class_weight, cfg.mask_weight, cfg.dice_weight, cfg.train_num_points)
        if isinstance(matcher, FixedMatcher) and cfg.num_queries != cfg.num_classes:
            raise ValueError(f"FixedMatcher needs num_queries == num_classes, got {cfg.num_queries} queries "
                             f"and {cfg.num_classes} classes")
        self.criterion = Mask2FormerCriterion(
            cfg.num_classes, matcher, class_weight=cfg.class_weight, mask_weight=cfg.mask_weight,
            dice_weight=cfg.dice_weight, no_object_weight=cfg.no_object_weight, num_points=cfg.train_num_points,
            oversample_ratio=cfg.oversample_ratio, importance_sample_ratio=cfg.importance_sample_ratio,
            mask_loss_on_points=cfg.mask_loss_on_points)
        self.reset_parameters()

    @property
    def matcher(self):
        return self.criterion.matcher

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def remove_learned_queries(self, content: bool = True, pos: bool = True) -> None:
        """Delete the learned query tables (``query_feat`` = content, ``query_embed`` = positional);
        forward then needs the matching ``query_content`` / ``query_pos`` argument."""
        if content:
            self.query_feat = None
        if pos:
            self.query_embed = None

    def _queries(self, override: Tensor | None, table: nn.Embedding | None, batch: int, name: str) -> Tensor:
        if override is None:
            if table is None:
                raise ValueError(f"the learned {name} table was removed: pass {name}=[B, Q, {self.cfg.hidden_dim}]")
            return table.weight[None].expand(batch, -1, -1)
        if override.dim() == 2:
            override = override[None]
        if override.dim() != 3 or override.shape[-1] != self.cfg.hidden_dim:
            raise ValueError(f"{name} must be [B, Q, {self.cfg.hidden_dim}], got {tuple(override.shape)}")
        return override.expand(batch, -1, -1)

    def _predict(self, queries: Tensor, mask_features: Tensor, attn_size: tuple[int, int]
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """Prediction heads on decoder outputs -> class logits, mask logits, and the next layer's
        attention mask (bool [B, Q, h*w] at ``attn_size``, True = may attend)."""
        x = self.decoder_norm(queries)
        logits = self.class_predictor(x)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        with torch.no_grad():
            small = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False).flatten(2)
            # mmdet masks where sigmoid < 0.5; written the same way (not ``small >= 0``) so that tiny negative
            # logits, whose sigmoid rounds to exactly 0.5, may attend as they do there
            allowed = ~(small.sigmoid() < 0.5)
            allowed = allowed | ~allowed.any(-1, keepdim=True)  # a fully masked row attends everywhere
        return logits, masks, allowed

    def forward(self, features: list[Tensor] | tuple[Tensor, ...], *, query_content: Tensor | None = None,
                query_pos: Tensor | None = None, text_context: Tensor | None = None) -> dict:
        """features: 4 maps [B, C_i, H_i, W_i] at strides 4, 8, 16, 32 ->
        dict(pred_logits [B, Q, C+1], pred_masks [B, Q, H/4, W/4],
             aux_outputs: decoder_layers dicts of the earlier sets (initial queries, layers 1..L-1))."""
        mask_features, memories = self.pixel_decoder(features, text_context)
        batch, dim = mask_features.shape[:2]
        memory, memory_pos = [], []
        for i, m in enumerate(memories):
            h, w = m.shape[-2:]
            memory.append(m.flatten(2).transpose(1, 2) + self.level_embed[i].to(m.dtype))
            pos = sine_positional_encoding(h, w, dim // 2, device=m.device, dtype=m.dtype)
            memory_pos.append(pos.flatten(1).T[None])
        x = self._queries(query_content, self.query_feat, batch, "query_content")
        qpos = self._queries(query_pos, self.query_embed, batch, "query_pos")
        if x.shape[1] != qpos.shape[1]:
            raise ValueError(f"query_content has {x.shape[1]} queries but query_pos has {qpos.shape[1]}")

        n_levels = len(memories)
        sizes = [tuple(m.shape[-2:]) for m in memories]
        logits, masks, attn = self._predict(x, mask_features, sizes[0])
        sets = [(logits, masks)]
        for i, layer in enumerate(self.layers):
            lvl = i % n_levels
            x = layer(x, qpos, memory[lvl], memory_pos[lvl], attn)
            logits, masks, attn = self._predict(x, mask_features, sizes[(i + 1) % n_levels])
            sets.append((logits, masks))
        return {
            "pred_logits": logits,
            "pred_masks": masks,
            "aux_outputs": [{"pred_logits": lg, "pred_masks": mk} for lg, mk in sets[:-1]],
        }

    def losses(self, outputs: dict, labels: Tensor, ignore_index: int = 255) -> dict[str, Tensor]:
        """Set loss against semantic labels [B, H, W] (train ids, ``ignore_index`` ignored) ->
        {"loss_cls", "loss_mask", "loss_dice"}, each weighted and summed over the prediction sets."""
        targets = semantic_targets(labels, self.cfg.num_classes, ignore_index)
        return self.criterion(outputs, targets)

    def predict(self, features, size: tuple[int, int] | None = None, **kwargs) -> Tensor:
        """Per-class scores of the final set (``semantic_inference``): [B, C, *size] with the mask logits
        upsampled to ``size`` first (mmseg), or [B, C, H/4, W/4] without ``size``."""
        out = self(features, **kwargs)
        return semantic_inference(out["pred_logits"], out["pred_masks"], size)
