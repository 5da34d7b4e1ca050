"""Rein: "Stronger, Fewer & Superior: Harnessing Vision Foundation Models for Domain Generalized Semantic
Segmentation" (CVPR 2024), reference code ``w1oves/Rein`` (mmseg 1.x). shared/specs/methods.md §2.

A frozen vision foundation model (DINOv2-L/14 converted to patch 16, or EVA02-L) is refined after *every*
block by a small set of learnable tokens ("Rein"), and the tokens also become the Mask2Former queries:

- :class:`ReinTokens` (the reference ``LoRAReins`` / ``Reins``): per layer i a token set T_i (m=100
  tokens; low rank ``T_i = A_i B_i`` with r=16, or full rank), token-to-feature attention
  ``S = softmax(f T_i^T / sqrt(C))`` over all m tokens, **token 0 dropped afterwards** (a "sink"),
  ``dF = MLP_delta(S[:, 1:] MLP_t2f(T_i[1:]) + f)``, ``f' = f + alpha * dF`` with one learnable scalar
  alpha (init 1e-3). The two MLPs are single Linear layers shared by all layers. The class token passes
  unchanged. The pieces are separate methods (``attention_logits``, ``attention``, ``delta``,
  ``get_tokens``) so SET / Vireo can subclass and replace one of them.
- :class:`QueryLink` ("link tokens to queries"): ``Linear(C->256)`` on the tokens of all layers, then per
  token max-pool, avg-pool over layers and the last layer, concatenated to 768 and ``Linear(768->256)``:
  Q [m, 256]. Quirk kept from the reference: the three pooled vectors are concatenated *per channel*
  (interleaved: c0_max, c0_avg, c0_last, c1_max, ...), which fixes the column order of ``merge.weight``.
- Head: the decoder's query positional embedding is Q and the query content is ``Linear(256->256)(Q)``
  (``decode_head.querys2feat``); both learned query tables of Mask2Former are deleted.

Only ``reins`` and ``decode_head`` train; the backbone stays frozen and in eval mode. The ``reins`` module
has exactly 2,990,081 parameters for DINOv2-L (the reference count; tests assert it). ``lora_dim=None``
builds the full-rank ``Reins`` variant (token tables 24x100x1024 = 2,457,600 instead of 431,616, i.e.
5,016,065 in all).

EVA02-L (``eva02_vitl14``) follows Rein's ``rein_eva02-L_mask2former.py``: patch 16, ImageNet mean/std,
and, like Rein's segmentation EVA2 code, no attention sub-LayerNorm (``attn_inner_norm=False``).

The 512 GTA recipe and the 1024 Cityscapes (-> ACDC) recipe are :func:`rein_recipe`; ``frozen_m2f`` (the
frozen-backbone baseline of Rein's Fig. 1) reuses it.

Official checkpoints (mmseg 1.x ``{"meta", "state_dict"}`` files, backbone weights stripped by the
reference ``state_dict`` override): ``backbone.reins.*`` and the mmdet ``decode_head.*``; both are
converted by :meth:`Rein.convert_checkpoint` (a full checkpoint's DINOv2 ``backbone.*`` keys are
converted with the backbone's own loader).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from methods.backbones.vit import ViTConfig, vit_config
from methods.base import IMAGENET_MEAN, IMAGENET_STD, ParamRule, TrainRecipe
from methods.heads.mmdet_keys import convert_mmdet_head
from methods.registry import register_method
from methods.vit_m2f import ViTMask2Former, ViTMask2FormerConfig, build_vit_m2f_config
from methods.weights import KeyReport

__all__ = [
    "REIN_SHORT_EDGES",
    "REIN_SHORT_EDGES_1024",
    "QueryLink",
    "Rein",
    "ReinConfig",
    "ReinTokens",
    "convert_rein_checkpoint",
    "drop_attn_sub_norm",
    "move_to_ignored",
    "rein_recipe",
    "rein_reference_template",
    "rein_token_init_bound",
]

REIN_SHORT_EDGES = tuple(int(512 * x * 0.1) for x in range(5, 21))
"""Rein's RandomChoiceResize: shortest edge in int(512 * x * 0.1), x = 5..20 (256 ... 1024)."""

REIN_SHORT_EDGES_1024 = tuple(int(1024 * x * 0.1) for x in range(5, 21))
"""The 1024x1024 (Cityscapes -> ACDC) config's choices: 512 ... 2048 (long side capped at 4096)."""

_REIN_SOURCES = ("gta5", "cityscapes")


def rein_recipe(scale: str, source: str = "gta5", **changes: Any) -> TrainRecipe:
    """Rein's training recipe (methods.md §2.2), or its CPU-sized twin for ``scale="miniature"``.

    - ``gta5``: ``configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py``: 40k iterations, batch 4,
      AdamW 1e-4 (wd 0.05), poly 0.9 without warmup, short-edge choices 256..1024 (max 2048), crop 512.
    - ``cityscapes``: ``configs/dinov2/rein_dinov2_mask2former_1024x1024_bs4x2.py`` (the C -> ACDC model):
      40k iterations, batch 8 (4 GPUs x 2), AdamW 6e-5, linear warmup from 1e-6 over 10k iterations then
      poly 0.9 from 10k to 40k, short-edge choices 512..2048 (max 4096), crop 1024. Its backbone has a
      64x64 position grid: use ``--backbone dinov2_vitl14_1024`` for the exact conversion (with the 512
      backbone the 32x32 grid is interpolated at run time instead).

    Weight decay (mmseg ``paramwise_cfg``): 0 for norms, ``query_embed``, the head's ``level_embed``
    (the pixel decoder's ``level_encoding`` does not match that key in the reference and keeps its
    decay), ``learnable_tokens`` and ``reins.scale``. Seed 42 in the reference runtime; fp32.
    """
    if source not in _REIN_SOURCES:
        raise ValueError(f"Rein has a training recipe for sources {_REIN_SOURCES}, not {source!r}")
    rules = (
        ParamRule("query_embed", decay_mult=0.0),
        ParamRule("decode_head.level_embed", decay_mult=0.0),
        ParamRule("learnable_tokens", decay_mult=0.0),
        ParamRule("reins.scale", decay_mult=0.0),
    )
    if source == "gta5":
        paper = TrainRecipe(
            iterations=40000, batch_size=4, optimizer="adamw", lr=1e-4, weight_decay=0.05,
            param_rules=rules, norm_decay_mult=0.0, schedule="poly", power=0.9, min_lr=0.0, warmup_iters=0,
            poly_convention="mmengine", crop_size=(512, 512),
            augmentation=dict(rescale="short_edge_choices", short_edge_choices=REIN_SHORT_EDGES, max_long_edge=2048,
                              cat_max_ratio=0.75, hflip_prob=0.5, photometric=True),
            gta_split="all", eval_variant="rein", checkpoint_interval=4000,
            source="w1oves/Rein configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py (seed 42, fp32)",
        )
    else:
        paper = TrainRecipe(
            iterations=40000, batch_size=8, optimizer="adamw", lr=6e-5, weight_decay=0.05,
            param_rules=rules, norm_decay_mult=0.0, schedule="poly", power=0.9, min_lr=0.0,
            warmup_iters=10000, warmup_ratio=1e-6, constant_iters=10000, poly_convention="mmengine",
            crop_size=(1024, 1024),
            augmentation=dict(rescale="short_edge_choices", short_edge_choices=REIN_SHORT_EDGES_1024,
                              max_long_edge=4096, cat_max_ratio=0.75, hflip_prob=0.5, photometric=True),
            eval_variant="rein_1024", checkpoint_interval=4000,
            source="w1oves/Rein configs/dinov2/rein_dinov2_mask2former_1024x1024_bs4x2.py (4 GPUs x 2; seed 42, "
                   "fp32)",
        )
    if scale == "miniature":
        # 480 x 4 crops of 256 px: the token-linked queries start all alike (they are read off tokens of size
        # ~1e-2) and need ~300 iterations to tell apart; at 160 Rein stayed at chance (2.9 mIoU, 13.2 at 480).
        paper = paper.replace(
            iterations=480, batch_size=4, lr=1e-3, warmup_iters=10, warmup_ratio=1e-6, constant_iters=0,
            crop_size=(256, 256),
            augmentation=dict(rescale="ratio_range", ratio_range=(0.75, 1.5), cat_max_ratio=0.75,
                              hflip_prob=0.5, photometric=True),
            checkpoint_interval=160, log_interval=40,
            source="miniature twin of " + paper.source,
        )
    elif scale != "paper":
        raise ValueError(f"unknown scale {scale!r}: use 'paper' or 'miniature'")
    return paper.replace(**changes)


# ------------------------------------------------------------------------------------------ the Rein module
def rein_token_init_bound(patch_size: int, embed_dim: int, lora_dim: int | None) -> float:
    """The uniform init bound of the token tables: sqrt(6 / (3 p^2 + C)) for full rank, and
    sqrt(6 / (3 p^2 + sqrt(C r))) for each low-rank factor (the reference's VPT-style formula)."""
    fan = embed_dim if lora_dim is None else math.sqrt(embed_dim * lora_dim)
    return math.sqrt(6.0 / (3 * patch_size * patch_size + fan))


class QueryLink(nn.Module):
    """Rein's token -> query link: ``transform`` (Linear C -> q) on the tokens of every layer, max / avg /
    last pooling over layers (:meth:`pool`), ``merge`` (Linear 3q -> q). [L, m, C] -> [m, q]."""

    def __init__(self, embed_dim: int, query_dim: int = 256):
        super().__init__()
        self.transform = nn.Linear(embed_dim, query_dim)
        self.merge = nn.Linear(3 * query_dim, query_dim)

    @staticmethod
    def pool(tokens: Tensor) -> Tensor:
        """[L, m, q] -> [m, 3q]: max over layers, mean over layers, last layer, interleaved per channel
        (column 3c+k holds pooling k of channel c), as the reference's cat(dim=-1) + flatten does."""
        return torch.stack((tokens.amax(dim=0), tokens.mean(dim=0), tokens[-1]), dim=-1).flatten(-2)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(f"QueryLink expects the tokens of all layers [L, m, C], got {tuple(tokens.shape)}")
        return self.merge(self.pool(self.transform(tokens)))


class ReinTokens(nn.Module):
    """Rein's token refinement after every backbone block (the reference ``LoRAReins``; ``Reins`` when
    ``lora_dim=None``).

    Parameters (reference names): ``learnable_tokens_a`` [L, m, r] and ``learnable_tokens_b`` [L, r, C]
    (or ``learnable_tokens`` [L, m, C]), ``scale`` (scalar, init ``scale_init``), ``mlp_token2feat`` and
    ``mlp_delta_f`` (Linear C -> C, shared by all layers), and ``link`` (:class:`QueryLink`, when
    ``link_to_query``).

    Extension points for subclasses (SET, Vireo): :meth:`get_tokens`, :meth:`attention_logits`,
    :meth:`attention`, :meth:`delta`, :meth:`refine` and :meth:`queries`. ``forward(x, layer)`` works on
    ``[B, prefix + N, C]`` tokens and is what :meth:`after_block` hands to the backbone.
    """

    def __init__(self, num_layers: int, embed_dim: int, *, token_length: int = 100, lora_dim: int | None = 16,
                 patch_size: int = 16, scale_init: float = 1e-3, use_softmax: bool = True,
                 link_to_query: bool = True, query_dim: int = 256):
        super().__init__()
        self.num_layers, self.embed_dim, self.token_length = num_layers, embed_dim, token_length
        self.lora_dim, self.patch_size, self.use_softmax = lora_dim, patch_size, use_softmax
        if lora_dim is None:
            self.learnable_tokens = nn.Parameter(torch.empty(num_layers, token_length, embed_dim))
        else:
            self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, token_length, lora_dim))
            self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, lora_dim, embed_dim))
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.mlp_token2feat = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f = nn.Linear(embed_dim, embed_dim)
        self.link = QueryLink(embed_dim, query_dim) if link_to_query else None
        self.scale_init = float(scale_init)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Token tables uniform(+-bound) (:func:`rein_token_init_bound`); the two MLPs keep PyTorch's Linear
        init (Kaiming-uniform with a=sqrt(5), as the reference re-applies); alpha = ``scale_init``."""
        bound = rein_token_init_bound(self.patch_size, self.embed_dim, self.lora_dim)
        tables = [self.learnable_tokens] if self.lora_dim is None else [self.learnable_tokens_a,
                                                                        self.learnable_tokens_b]
        for t in tables:
            nn.init.uniform_(t, -bound, bound)
        for lin in (self.mlp_token2feat, self.mlp_delta_f):
            lin.reset_parameters()
        self.scale.fill_(self.scale_init)

    # ----------------------------------------------------------------------------- pieces
    def get_tokens(self, layer: int = -1) -> Tensor:
        """T_i [m, C] of one layer, or of all layers [L, m, C] for ``layer=-1``."""
        if self.lora_dim is None:
            return self.learnable_tokens if layer == -1 else self.learnable_tokens[layer]
        if layer == -1:
            return self.learnable_tokens_a @ self.learnable_tokens_b
        return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]

    def attention_logits(self, feats: Tensor, tokens: Tensor, layer: int) -> Tensor:
        """Token-to-feature similarity [B, N, m]: f T^T, scaled by 1/sqrt(C) when softmax is used."""
        logits = feats @ tokens.t()
        return logits * self.embed_dim ** -0.5 if self.use_softmax else logits

    def attention(self, logits: Tensor, layer: int) -> Tensor:
        """S: softmax over all m tokens (token 0 included; it is dropped afterwards in :meth:`delta`)."""
        return logits.softmax(dim=-1) if self.use_softmax else logits

    def delta(self, feats: Tensor, tokens: Tensor, layer: int) -> Tensor:
        """dF = MLP_delta(S[:, :, 1:] MLP_t2f(T[1:]) + f) (before the alpha scale)."""
        attn = self.attention(self.attention_logits(feats, tokens, layer), layer)
        delta_bar = attn[..., 1:] @ self.mlp_token2feat(tokens[1:])
        return self.mlp_delta_f(delta_bar + feats)

    def refine(self, feats: Tensor, layer: int) -> Tensor:
        """f' = f + alpha dF on patch tokens [B, N, C]."""
        return feats + self.delta(feats, self.get_tokens(layer), layer) * self.scale

    def forward(self, x: Tensor, layer: int, num_prefix_tokens: int = 1) -> Tensor:
        """Tokens after block ``layer`` [B, prefix + N, C] -> refined tokens; prefix (class) tokens unchanged."""
        if num_prefix_tokens:
            prefix, feats = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
            return torch.cat([prefix, self.refine(feats, layer)], dim=1)
        return self.refine(x, layer)

    def after_block(self, index: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """The ``ViTBackbone`` hook: ``after_block(i, tokens, (h, w))``."""
        return self(tokens, index)

    def queries(self) -> Tensor:
        """Q [m, query_dim] from the tokens of all layers (needs ``link_to_query``)."""
        if self.link is None:
            raise RuntimeError("this ReinTokens was built with link_to_query=False: it has no query link")
        return self.link(self.get_tokens(-1))


# ------------------------------------------------------------------------------------------ checkpoints
_REIN_MODULE_KEYS = ("learnable_tokens_a", "learnable_tokens_b", "learnable_tokens", "scale", "mlp_token2feat.",
                     "mlp_delta_f.")


def convert_rein_checkpoint(state: Mapping[str, Tensor], *, reins_prefix: str = "reins.",
                            src_reins_prefix: str = "backbone.reins.") -> tuple[dict[str, Tensor], dict[str, Tensor],
                                                                                  str]:
    """Map an mmseg Rein-family checkpoint onto this implementation's names.

    ``backbone.reins.{learnable_tokens_a, learnable_tokens_b, learnable_tokens, scale, mlp_token2feat,
    mlp_delta_f}`` -> ``reins.*``; ``backbone.reins.{transform, merge}`` -> ``reins.link.*``;
    ``decode_head.querys2feat`` -> ``decode_head.querys2feat``; the mmdet Mask2Former head via
    :func:`methods.heads.mmdet_keys.convert_mmdet_head`. Returns (converted tensors, keys left over with
    their original names, mmdet naming style). Shared by Rein, SET and Vireo.
    """
    head = convert_mmdet_head(state)
    out = dict(head.tensors)
    left: dict[str, Tensor] = {}
    for key, value in {**head.rest, **head.unmatched}.items():
        if key.startswith(src_reins_prefix):
            rel = key[len(src_reins_prefix):]
            if rel.startswith(("transform.", "merge.")):
                out[reins_prefix + "link." + rel] = value
            else:
                out[reins_prefix + rel] = value  # tokens, scale, MLPs, and any subclass extras (SET, Vireo)
        elif key.startswith("decode_head.querys2feat."):
            out[key] = value
        else:
            left[key] = value
    return out, left, head.style


def rein_reference_template(num_layers: int, embed_dim: int, *, token_length: int = 100, lora_dim: int | None = 16,
                            query_dim: int = 256, prefix: str = "backbone.reins.") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the reference ``LoRAReins`` (``Reins`` for ``lora_dim=None``) state dict with
    ``link_token_to_query=True``, as found in released checkpoints (for tests that build synthetic ones)."""
    t: dict[str, tuple[int, ...]] = {}
    if lora_dim is None:
        t["learnable_tokens"] = (num_layers, token_length, embed_dim)
    else:
        t["learnable_tokens_a"] = (num_layers, token_length, lora_dim)
        t["learnable_tokens_b"] = (num_layers, lora_dim, embed_dim)
    t["scale"] = ()
    for mlp in ("mlp_token2feat", "mlp_delta_f"):
        t[f"{mlp}.weight"], t[f"{mlp}.bias"] = (embed_dim, embed_dim), (embed_dim,)
    t["transform.weight"], t["transform.bias"] = (query_dim, embed_dim), (query_dim,)
    t["merge.weight"], t["merge.bias"] = (query_dim, 3 * query_dim), (query_dim,)
    return {prefix + k: v for k, v in t.items()}


def _is_mmseg_checkpoint(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("backbone.reins.", "decode_head.transformer_decoder.", "decode_head.cls_embed.",
                             "decode_head.pixel_decoder.encoder.")) for k in state)


# ------------------------------------------------------------------------------------------ EVA02 helpers
def drop_attn_sub_norm(backbone: nn.Module) -> int:
    """Remove EVA02's attention sub-LayerNorm (``inner_attn_ln``; timm ``attn.norm``) from every block.

    The segmentation EVA02 code that Rein (``rein/models/backbones/eva_02.py``) and the VLTSeg
    re-implementation build on has no such norm, so the pretrained ``inner_attn_ln`` weights are discarded
    there. Returns the number of blocks changed."""
    n = 0
    for blk in getattr(getattr(backbone, "vit", backbone), "blocks", []):
        attn = getattr(blk, "attn", None)
        if attn is not None and isinstance(getattr(attn, "norm", None), nn.LayerNorm):
            attn.norm = nn.Identity()
            n += 1
    return n


def move_to_ignored(report: KeyReport, fragments: tuple[str, ...]) -> KeyReport:
    """Re-file the ``unexpected`` keys containing any of ``fragments`` as ``ignored`` (tensors of the
    official file that the reference architecture deliberately does not use)."""
    hits = [k for k in report.unexpected if any(f in k for f in fragments)]
    report.unexpected = [k for k in report.unexpected if k not in hits]
    report.ignored = list(report.ignored) + hits
    return report


# ------------------------------------------------------------------------------------------ the method
REIN_BACKBONES = ("dinov2_vitl14", "eva02_vitl14", "dinov2_vitl14_1024")
"""- ``dinov2_vitl14``: DINOv2-L/14 converted to patch 16, 512 px (32x32 position grid), Rein's main model.
- ``eva02_vitl14``: EVA02-L (``eva02_L_pt_m38m_p14to16.pt``, the EVA-02 MIM model already at patch 16,
  as named in Rein's README), 512 px, drop-path 0.2 (inactive: frozen, eval mode), ImageNet mean/std as in
  ``rein_eva02-L_mask2former.py``; like Rein's EVA2 code, without the attention sub-LayerNorm.
- ``dinov2_vitl14_1024``: DINOv2-L for the 1024x1024 C -> ACDC config (64x64 position grid)."""


def rein_vit_config(backbone: str, scale: str) -> ViTConfig:
    """The frozen ViT of a Rein backbone name at a scale."""
    if backbone not in REIN_BACKBONES:
        raise KeyError(f"Rein backbones are {REIN_BACKBONES}, not {backbone!r}")
    eva = backbone.startswith("eva02")
    if scale == "miniature":
        base = vit_config("eva02_tiny" if eva else "dinov2_tiny", frozen=True)
        return dataclasses.replace(base, proj_dim=None, mean=IMAGENET_MEAN, std=IMAGENET_STD) if eva else base
    if backbone == "dinov2_vitl14":
        return vit_config("dinov2_vitl14", frozen=True)
    if backbone == "dinov2_vitl14_1024":
        return vit_config("dinov2_vitl14", frozen=True, img_size=1024)
    return vit_config(
        "eva02_clip_vitl14", frozen=True, patch_size=16, source_patch_size=14, img_size=512,
        taps=(7, 11, 15, 23), drop_path=0.2, proj_dim=None, rope_ref_grid=16,
        weights_file="eva02_L_pt_m38m_p14to16.pt", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    )


@dataclass
class ReinConfig(ViTMask2FormerConfig):
    """Rein = frozen ViT + :class:`ReinTokens` + Mask2Former with token-linked queries."""

    token_length: int = 100  # m: tokens per layer = number of queries
    lora_dim: int | None = 16  # r; None: full-rank "Reins"
    scale_init: float = 1e-3  # alpha at init
    use_softmax: bool = True
    link_to_query: bool = True  # Q from the tokens; the head's learned query tables are deleted
    attn_inner_norm: bool = False  # EVA02 only: keep EVA's attention sub-LN (Rein's EVA2 code has none)


@register_method
class Rein(ViTMask2Former):
    """Rein (CVPR 2024): frozen DINOv2-L / EVA02-L + per-layer LoRA tokens + token-linked Mask2Former."""

    name = "rein"
    paper = "Rein: Stronger, Fewer & Superior (CVPR 2024)"
    config_class = ReinConfig
    backbones = REIN_BACKBONES

    config: ReinConfig

    def __init__(self, config: ReinConfig):
        super().__init__(config)
        vit, head = config.vit, config.head
        if config.link_to_query and config.token_length != head.num_queries:
            raise ValueError(f"Rein links its {config.token_length} tokens to the queries: the head needs "
                             f"num_queries={config.token_length}, got {head.num_queries}")
        self.reins = ReinTokens(
            vit.depth, vit.embed_dim, token_length=config.token_length, lora_dim=config.lora_dim,
            patch_size=vit.patch_size, scale_init=config.scale_init, use_softmax=config.use_softmax,
            link_to_query=config.link_to_query, query_dim=head.hidden_dim)
        if vit.family == "eva02" and not config.attn_inner_norm:
            drop_attn_sub_norm(self.backbone)
        if config.link_to_query:
            self.decode_head.remove_learned_queries()
            # query content = Linear(Q); the reference's ``decode_head.querys2feat``
            self.decode_head.querys2feat = nn.Linear(head.hidden_dim, head.hidden_dim)

    # ---------------------------------------------------------------------------------- construction
    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper", **fields: Any) -> ReinConfig:
        backbone = backbone or cls.backbones[0]
        vit = rein_vit_config(backbone, scale)
        base_name = "eva02_clip_vitl14" if backbone.startswith("eva02") else "dinov2_vitl14"
        token_length = fields.pop("token_length", 100)
        cfg = build_vit_m2f_config(ReinConfig, base_name, scale, frozen=True, num_queries=token_length, **fields)
        cfg.backbone = backbone
        cfg.vit = vit
        cfg.image_mean, cfg.image_std = IMAGENET_MEAN, IMAGENET_STD  # Rein normalises EVA02 with ImageNet stats too
        cfg.token_length = cfg.head.num_queries  # the miniature head caps the queries (and so the tokens) at 32
        return cfg

    @classmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return rein_recipe(scale, source)

    # ---------------------------------------------------------------------------------- hooks
    def after_block(self):
        return self.reins.after_block

    def head_queries(self) -> dict[str, Tensor]:
        if not self.config.link_to_query:
            return {}
        q = self.reins.queries()
        return {"query_pos": q, "query_content": self.decode_head.querys2feat(q)}

    # ---------------------------------------------------------------------------------- checkpoints
    def pretrained_loaders(self) -> dict[str, Any]:
        return {file: self._load_official for file in self.pretrained_files(self.config)}

    def _load_official(self, path) -> KeyReport:
        """The frozen backbone's official file; EVA02's ``inner_attn_ln`` is reported as ignored when the
        architecture drops it (``attn_inner_norm=False``)."""
        report = self.backbone.load_official(path)
        if self.config.vit.family == "eva02" and not self.config.attn_inner_norm:
            move_to_ignored(report, (".attn.inner_attn_ln.",))
        return report

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official mmseg checkpoints (``backbone.reins.*`` + mmdet ``decode_head.*``) -> our keys; a
        checkpoint of this implementation passes through unchanged."""
        self._conversion_notes: list[str] = []
        if not _is_mmseg_checkpoint(state):
            return state
        out, left, style = convert_rein_checkpoint(state)
        self._conversion_notes.append(f"mmseg Rein checkpoint (head naming {style}) -> this implementation")
        backbone_keys = {k[len("backbone."):]: v for k, v in left.items() if k.startswith("backbone.")}
        if backbone_keys:  # a "full weights" file: the frozen backbone too, in the reference's DINOv2/EVA naming
            from methods.backbones.checkpoints import convert_for_backbone

            try:
                converted, report = convert_for_backbone(backbone_keys, self.backbone)
            except ValueError as err:
                self._conversion_notes.append(f"backbone.* keys not converted ({err})")
            else:
                out.update({"backbone." + k: v for k, v in converted.items()})
                left = {k: v for k, v in left.items() if not k.startswith("backbone.")}
                left.update({"backbone." + k: backbone_keys[k] for k in report.unexpected if k in backbone_keys})
                self._conversion_notes.append(f"backbone.* ({report.layout}): " + "; ".join(report.converted))
        out.update(left)  # whatever is left is reported as unexpected by load_checkpoint
        return out

    def load_checkpoint(self, state, *, strict: bool = False) -> KeyReport:
        report = super().load_checkpoint(state, strict=strict)
        report.converted = list(getattr(self, "_conversion_notes", []))
        return report
