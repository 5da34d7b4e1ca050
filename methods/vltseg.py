"""VLTSeg: "Strong but Simple: A Baseline for Domain Generalized Dense Perception by CLIP-based Transfer
Learning" (arXiv 2312.02021; ACCV 2024). shared/specs/methods.md §6.

There is no official code. This follows the public re-implementation ``VLTSeg/VLTSeg`` (mmseg 1.x, "we are
not the authors of the paper"), whose Zenodo checkpoints load here:

- **Encoder**: the EVA02-CLIP-L/14 image tower (``EVA02_CLIP_L_psz14_s4B.pt``), **fully fine-tuned**,
  taps after blocks [9, 14, 19, 23], drop-path 0.2. Also CLIP ViT-B/16 (``ViT-B-16.pt``; the tqdm table's
  VLTSeg row; the re-implementation has no config for it, so CLIP's own mean/std are used).
- **Neck**: the re-implementation's backbone carries BEiT/ViTDet-style ``fpn1..fpn4`` (deconv-BN-GELU-deconv,
  deconv, identity, max-pool): :class:`methods.backbones.vit.SimpleFPN` (``neck="simple_fpn"``, default;
  ``"bilinear"`` gives Rein's parameter-free resampling instead).
- **Head**: standard Mask2Former (100 queries, Hungarian matching, losses 2/5/5).

Quirks of the re-implementation's final configs (``ViTEVA02WithXAttn``, an mmpretrain ViT) kept by default,
each switchable:

- the image normalisation is ImageNet's mean/std (its ``SegDataPreProcessor``), not CLIP's;
- the position table stays at the 224-px 16x16 grid and is resized bicubically for every input
  (``img_size=224``), so it is fine-tuned at 16x16;
- EVA's attention sub-LayerNorm (``inner_attn_ln``) is dropped (``attn_inner_norm=False``): the
  re-implementation's attention has none, so those pretrained weights are discarded;
- there is no final LayerNorm (``final_norm=False``; the last tap is read before it anyway);
- drop-path 0.2 as in the re-implementation's README / base config (its final GTA config builds
  ``ViTEVA02WithXAttn`` without setting it, i.e. 0.0; the spec's 0.2 is kept);
- the rotary embedding is mmpretrain's (``rope="mmpretrain"``): positions scaled to head_dim/2 (32) instead
  of EVA-CLIP's 16, and sin/cos tables *tiled* over the two halves of each axis instead of interleaved
  (``rope="eva_clip"`` gives EVA-CLIP's own);
- the fused ``qkv`` Linear gives the *key* projection a trainable bias (zero in EVA-CLIP, which has
  none): ``k_bias=True`` adds it (zero-initialised). It is not softmax-invariant here because the rotary
  embedding rotates it differently at every key position.

**PTM (arXiv v1/v2 only)**: a DenseCLIP-style pixel-text matching loss with the frozen CLIP text encoder
(``ptm_loss_weight > 0``; off by default, as in v3+/ACCV and the re-implementation). The projected,
L2-normalised final patch tokens are matched to the L2-normalised class-name embeddings; the score map
divided by a temperature is upsampled to the labels and trained with cross-entropy (ignore 255).
**The v1 weight, temperature and prompt could not be verified** (methods.md §6): defaults are DenseCLIP's
temperature 0.07 and the prompt "a photo of a {}.".
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.backbones.vit import SimpleFPN, ViTConfig, vit_config
from methods.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ParamRule, TrainRecipe
from methods.heads.mmdet_keys import convert_mmdet_head
from methods.registry import register_method
from methods.rein import drop_attn_sub_norm, move_to_ignored
from methods.vit_m2f import ViTMask2Former, ViTMask2FormerConfig, build_vit_m2f_config
from methods.weights import KeyReport

__all__ = [
    "NORM_RULE_TAG",
    "MMPretrainRope",
    "add_key_bias",
    "VLTSeg",
    "VLTSegConfig",
    "expand_norm_rules",
    "mmpretrain_eva02_to_eva_clip",
    "vltseg_backbone_template",
    "vltseg_recipe",
]

NORM_RULE_TAG = "[norm]"
"""A ``ParamRule`` whose key is ``"<prefix>[norm]"`` applies to the normalisation-layer parameters whose
name starts with ``<prefix>`` (VLTSeg's backbone norms: lr 0.1x, no decay), before the other rules."""

VLTSEG_BACKBONES = ("eva02_clip_vitl14_s4b", "clip_vitb16")
_SOURCES = ("gta5", "synthia", "cityscapes")
_TEXT_TOWERS = {"eva02": "EVA02-L-14", "clip": "ViT-B-16"}


# ------------------------------------------------------------------------------------------ recipe
def vltseg_recipe(scale: str, source: str = "gta5", **changes: Any) -> TrainRecipe:
    """The re-implementation's recipe (``configs/_base_/schedules/schedule_5k.py`` / ``schedule_20k.py``).

    AdamW lr 1e-4, wd 0.05; ``backbone`` lr x0.1 (its fpn neck too); backbone norms and pos-embed lr x0.1
    with no decay; decoder query / level embeddings no decay; other head norms no decay
    (``norm_decay_mult=0``); grad-clip max L2 norm 0.01; LR constant for 500 iterations, then poly 0.9 to 0.
    Synthetic sources (GTA5, SYNTHIA): 5k iterations, batch 16 (2x8), resize to exactly 1280x720, crop
    512 (cat 0.75), flip, photometric distortion, all GTA images. Real sources (Cityscapes): 20k
    iterations, batch 8 (2x4), resize to 2048x1024, crop 1024. Seed 0, fp32.
    """
    if source not in _SOURCES:
        raise ValueError(f"VLTSeg has a training recipe for sources {_SOURCES}, not {source!r}")
    rules = (
        ParamRule("backbone." + NORM_RULE_TAG, lr_mult=0.1, decay_mult=0.0),
        ParamRule("backbone.vit.pos_embed", lr_mult=0.1, decay_mult=0.0),
        ParamRule("backbone.", lr_mult=0.1, decay_mult=1.0),
        ParamRule("neck.", lr_mult=0.1, decay_mult=1.0),  # the re-implementation's fpn1..4 live in its backbone
        ParamRule("decode_head.query_embed", lr_mult=1.0, decay_mult=0.0),
        ParamRule("decode_head.query_feat", lr_mult=1.0, decay_mult=0.0),
        ParamRule("decode_head.level_embed", lr_mult=1.0, decay_mult=0.0),
    )
    common = dict(optimizer="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8, param_rules=rules,
                  norm_decay_mult=0.0, schedule="poly", power=0.9, min_lr=0.0, warmup_iters=0, constant_iters=500,
                  poly_convention="mmengine", grad_clip=0.01)
    if source in ("gta5", "synthia"):
        recipe = TrainRecipe(
            iterations=5000, batch_size=16, crop_size=(512, 512),
            augmentation=dict(rescale="fixed", fixed_size=(1280, 720), cat_max_ratio=0.75, hflip_prob=0.5,
                              photometric=True),
            gta_split="all", eval_variant="vltseg", checkpoint_interval=500,
            source="VLTSeg/VLTSeg (re-implementation) configs/mask2former_evaclip_2xb8_5k_gta2cityscapes.py, "
                   "schedule_5k.py (seed 0, fp32)",
            **common)
    else:
        recipe = TrainRecipe(
            iterations=20000, batch_size=8, crop_size=(1024, 1024),
            augmentation=dict(rescale="fixed", fixed_size=(2048, 1024), cat_max_ratio=0.75, hflip_prob=0.5,
                              photometric=True),
            eval_variant="vltseg_1024", checkpoint_interval=2000,
            source="VLTSeg/VLTSeg (re-implementation) configs/mask2former_evaclip_2xb4_20k_cityscapes2cityscapes.py,"
                   " schedule_20k.py (seed 0, fp32)",
            **common)
    if scale == "miniature":
        recipe = recipe.replace(
            iterations=160, batch_size=4, lr=1e-3, constant_iters=16, crop_size=(256, 256),
            augmentation=dict(rescale="ratio_range", ratio_range=(0.75, 1.5), cat_max_ratio=0.75, hflip_prob=0.5,
                              photometric=True),
            checkpoint_interval=80, log_interval=20, source="miniature twin of " + recipe.source)
    elif scale != "paper":
        raise ValueError(f"unknown scale {scale!r}: use 'paper' or 'miniature'")
    return recipe.replace(**changes)


def _norm_param_names(module: nn.Module) -> list[str]:
    names = []
    for mod_name, mod in module.named_modules():
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            names += [f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)]
    return names


def expand_norm_rules(module: nn.Module, rules: tuple[ParamRule, ...]) -> tuple[ParamRule, ...]:
    """Replace each ``"<prefix>[norm]"`` rule by one exact-name rule per normalisation-layer parameter under
    ``<prefix>`` (same multipliers), keeping the rule order (first match wins in ``Method.param_groups``)."""
    norms = None
    out: list[ParamRule] = []
    for rule in rules:
        if not rule.key.endswith(NORM_RULE_TAG):
            out.append(rule)
            continue
        norms = _norm_param_names(module) if norms is None else norms
        prefix = rule.key[: -len(NORM_RULE_TAG)]
        out += [ParamRule(n, rule.lr_mult, rule.decay_mult) for n in norms if n.startswith(prefix)]
    return tuple(out)


# ------------------------------------------------------------------------------------------ encoder quirks
class MMPretrainRope(nn.Module):
    """mmpretrain's ``RotaryEmbeddingFast`` as the re-implementation's EVA02 uses it, in timm's format.

    For head dim d: frequencies 1 / theta^(2k/(d/2)), k < d/4; positions ``arange(n) / n * d/2`` per axis;
    each axis' angles are *tiled* (``repeat(1, 2)``) to d/2 and [height | width] concatenated to d.
    ``get_embed((h, w))`` returns ``cat([sin, cos], -1)`` [h*w, 2d] for timm's interleaved-pair rotation
    (the same rotation mmpretrain applies). Computed on the fly: no parameters, no stored tables.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rotary head dim {head_dim} must be divisible by 4")
        self.head_dim, self.theta = head_dim, float(theta)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # device only

    def angles(self, shape: tuple[int, int] | list[int]) -> Tensor:
        h, w = int(shape[0]), int(shape[1])
        half = self.head_dim // 2
        device = self._anchor.device if self._anchor.device.type != "meta" else torch.device("cpu")
        freq = 1.0 / self.theta ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half)
        th = torch.arange(h, device=device, dtype=torch.float32) / h * half
        tw = torch.arange(w, device=device, dtype=torch.float32) / w * half
        ph = (th[:, None] * freq[None]).repeat(1, 2)  # [h, half], tiled
        pw = (tw[:, None] * freq[None]).repeat(1, 2)
        pos = torch.cat([ph[:, None].expand(h, w, half), pw[None].expand(h, w, half)], dim=-1)
        return pos.reshape(h * w, self.head_dim)

    def get_embed(self, shape: list[int] | tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> Tensor:
        if shape is None:
            raise ValueError("MMPretrainRope.get_embed needs the token grid (h, w)")
        pos = self.angles(shape)
        emb = torch.cat([pos.sin(), pos.cos()], dim=-1)
        return emb if dtype is None else emb.to(dtype)


def add_key_bias(backbone: nn.Module) -> int:
    """Give every EVA02 block's key projection a zero-initialised trainable bias (the re-implementation's
    fused ``qkv`` Linear has one; EVA-CLIP's attention has none). Returns the number of blocks changed."""
    n = 0
    for blk in backbone.vit.blocks:
        old = blk.attn.k_proj
        if old.bias is not None:
            continue
        new = nn.Linear(old.in_features, old.out_features, bias=True, device=old.weight.device,
                        dtype=old.weight.dtype)
        new.weight = old.weight
        with torch.no_grad():
            new.bias.zero_()
        new.bias.requires_grad_(old.weight.requires_grad)
        blk.attn.k_proj = new
        n += 1
    return n


def vltseg_vit_config(backbone: str, scale: str, *, proj: bool) -> ViTConfig:
    """The fine-tuned ViT of a VLTSeg backbone name (``proj``: keep the image->text projection for PTM)."""
    if backbone not in VLTSEG_BACKBONES:
        raise KeyError(f"VLTSeg backbones are {VLTSEG_BACKBONES}, not {backbone!r}")
    eva = backbone.startswith("eva02")
    if scale == "miniature":
        cfg = vit_config("eva02_tiny" if eva else "clip_tiny", frozen=False)
        return cfg if proj else dataclasses.replace(cfg, proj_dim=None)
    if eva:  # the re-implementation's img_size=224: a 16x16 position table, resized per input
        cfg = vit_config("eva02_clip_vitl14_s4b", frozen=False, img_size=224, rope_ref_grid=16)
        return dataclasses.replace(cfg, proj_dim=768, proj_bias=True) if proj else cfg
    cfg = vit_config("clip_vitb16", frozen=False)
    return cfg if proj else dataclasses.replace(cfg, proj_dim=None)


# ------------------------------------------------------------------------------------------ checkpoint keys
def mmpretrain_eva02_to_eva_clip(sd: Mapping[str, Tensor], *, keep_k_bias: bool = True
                                 ) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """The re-implementation's ``ViTEVA02WithXAttn`` backbone keys (mmpretrain names, without the
    ``backbone.`` prefix) -> EVA-CLIP visual-tower names, which :mod:`methods.backbones.checkpoints` converts.

    ``patch_embed.projection`` -> ``patch_embed.proj``; ``layers.N`` -> ``blocks.N``; fused ``attn.qkv``
    -> ``q_proj`` / ``k_proj`` / ``v_proj`` weights, ``q_bias`` / ``v_bias`` and ``k_proj.bias`` (the
    re-implementation's trainable key bias; dropped with a note when ``keep_k_bias=False``); ``attn.inner_attn_norm`` ->
    ``attn.inner_attn_ln``; ``mlp.w12`` -> ``mlp.w1`` (gate) / ``mlp.w2``; ``mlp.norm`` -> ``mlp.ffn_ln``;
    ``ln1`` -> ``norm``. Rotary tables are ignored. Returns (tensors, notes, ignored keys).
    """
    out: dict[str, Tensor] = {}
    notes: list[str] = []
    ignored: list[str] = []
    dropped_k_bias, max_k_bias = 0, 0.0
    for key, value in sd.items():
        if "rope." in key or key.startswith("rope"):
            ignored.append(key)
            continue
        name = key.replace("patch_embed.projection.", "patch_embed.proj.")
        name = re.sub(r"^layers\.(\d+)\.", r"blocks.\1.", name)
        name = re.sub(r"^ln1\.", "norm.", name)
        if name.endswith("attn.qkv.weight"):
            q, k, v = value.chunk(3, dim=0)
            stem = name[: -len("qkv.weight")]
            out[stem + "q_proj.weight"], out[stem + "k_proj.weight"], out[stem + "v_proj.weight"] = q, k, v
            continue
        if name.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3, dim=0)
            stem = name[: -len("qkv.bias")]
            out[stem + "q_bias"], out[stem + "v_bias"] = q, v
            if keep_k_bias:
                out[stem + "k_proj.bias"] = k
            else:
                dropped_k_bias += 1
                max_k_bias = max(max_k_bias, float(k.abs().max()) if k.numel() else 0.0)
            continue
        if ".mlp.w12." in name:
            w1, w2 = value.chunk(2, dim=0)
            out[name.replace(".mlp.w12.", ".mlp.w1.")] = w1
            out[name.replace(".mlp.w12.", ".mlp.w2.")] = w2
            continue
        name = name.replace(".attn.inner_attn_norm.", ".attn.inner_attn_ln.").replace(".mlp.norm.", ".mlp.ffn_ln.")
        out[name] = value
    if any(k.endswith("attn.qkv.weight") for k in sd):
        notes.append("attn.qkv split into q/k/v")
    if dropped_k_bias:
        notes.append(f"key bias dropped in {dropped_k_bias} blocks (model has k_bias=False; max |b_k| = "
                     f"{max_k_bias:.3g}: outputs differ unless it is 0)")
    return out, notes, ignored


def vltseg_backbone_template(vit: ViTConfig, *, neck: bool = True, attn_inner_norm: bool = False,
                             final_norm: bool = False, prefix: str = "backbone.") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the re-implementation's ``ViTEVA02WithXAttn`` backbone state dict (mmpretrain
    names) for an EVA02 ``vit`` config, including its ``fpn1``/``fpn2`` neck and rotary buffers (for tests
    that generate synthetic Zenodo checkpoints)."""
    if vit.family != "eva02":
        raise ValueError("the re-implementation's checkpoints exist for EVA02 only")
    d, p = vit.embed_dim, vit.patch_size
    hidden = int(d * vit.mlp_ratio)
    g = vit.img_size // p
    t: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d), "pos_embed": (1, 1 + g * g, d),
        "patch_embed.projection.weight": (d, 3, p, p), "patch_embed.projection.bias": (d,),
        "rope.freqs_cos": (g * g, d // vit.num_heads), "rope.freqs_sin": (g * g, d // vit.num_heads),
    }
    for n in range(vit.depth):
        b = f"layers.{n}."
        t.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "attn.rope.freqs_cos": (g * g, d // vit.num_heads),
            b + "attn.rope.freqs_sin": (g * g, d // vit.num_heads),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.w12.weight": (2 * hidden, d), b + "mlp.w12.bias": (2 * hidden,),
            b + "mlp.norm.weight": (hidden,), b + "mlp.norm.bias": (hidden,),
            b + "mlp.w3.weight": (d, hidden), b + "mlp.w3.bias": (d,),
        })
        if attn_inner_norm:
            t[b + "attn.inner_attn_norm.weight"] = (d,)
            t[b + "attn.inner_attn_norm.bias"] = (d,)
    if final_norm:
        t["ln1.weight"], t["ln1.bias"] = (d,), (d,)
    if neck:
        t.update({
            "fpn1.0.weight": (d, d, 2, 2), "fpn1.0.bias": (d,),
            "fpn1.1.weight": (d,), "fpn1.1.bias": (d,), "fpn1.1.running_mean": (d,), "fpn1.1.running_var": (d,),
            "fpn1.1.num_batches_tracked": (),
            "fpn1.3.weight": (d, d, 2, 2), "fpn1.3.bias": (d,),
            "fpn2.weight": (d, d, 2, 2), "fpn2.bias": (d,),
        })
    return {prefix + k: v for k, v in t.items()}


def _is_mmseg_checkpoint(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("backbone.layers.", "backbone.blocks.", "backbone.fpn1.", "backbone.patch_embed.",
                             "decode_head.transformer_decoder.", "decode_head.cls_embed."))
               for k in state)


# ------------------------------------------------------------------------------------------ the method
@dataclass
class VLTSegConfig(ViTMask2FormerConfig):
    """VLTSeg = fully fine-tuned CLIP image encoder + neck + Mask2Former (+ optional v1 PTM loss)."""

    neck: str = "simple_fpn"  # "simple_fpn" (re-implementation) | "bilinear" (Rein-style resampling)
    rope: str = "mmpretrain"  # EVA02 only: "mmpretrain" (re-implementation) | "eva_clip"
    attn_inner_norm: bool = False  # EVA02 only: keep EVA's attention sub-LN (the re-implementation drops it)
    k_bias: bool = True  # EVA02 only: trainable key bias of the re-implementation's fused qkv (EVA-CLIP: none)
    final_norm: bool = False  # keep the encoder's final LayerNorm (needed, and forced, for PTM)
    ptm_loss_weight: float = 0.0  # v1 pixel-text matching loss; 0 = off (v3+/ACCV). UNVERIFIED weight
    ptm_temperature: float = 0.07  # DenseCLIP's; UNVERIFIED for VLTSeg v1
    ptm_template: str = "a photo of a {}."
    text_encoder: str = ""  # methods.backbones.text config name for PTM ("" = the backbone's own tower)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.neck not in ("simple_fpn", "bilinear"):
            raise ValueError(f"VLTSegConfig.neck={self.neck!r}: expected 'simple_fpn' or 'bilinear'")
        if self.rope not in ("mmpretrain", "eva_clip"):
            raise ValueError(f"VLTSegConfig.rope={self.rope!r}: expected 'mmpretrain' or 'eva_clip'")


@register_method
class VLTSeg(ViTMask2Former):
    """VLTSeg (ACCV 2024; re-implementation): fine-tuned EVA02-CLIP-L / CLIP-B + Mask2Former."""

    name = "vltseg"
    paper = "VLTSeg: Strong but Simple (arXiv 2312.02021, ACCV 2024); public re-implementation VLTSeg/VLTSeg"
    config_class = VLTSegConfig
    backbones = VLTSEG_BACKBONES

    config: VLTSegConfig

    def __init__(self, config: VLTSegConfig):
        if config.ptm_loss_weight > 0 and config.vit.proj_dim is None:
            # PTM switched on after default_config (e.g. create_method(..., ptm_loss_weight=w)): keep the
            # image->text projection and pick the backbone's own text tower
            config.vit = vltseg_vit_config(config.backbone, config.scale, proj=True)
            config.text_encoder = config.text_encoder or _text_tower(config)
        super().__init__(config)
        vit = config.vit
        if config.neck == "simple_fpn":
            self.neck = SimpleFPN(vit.embed_dim)
        if vit.family == "eva02":
            if not config.attn_inner_norm:
                drop_attn_sub_norm(self.backbone)
            if config.k_bias:
                add_key_bias(self.backbone)
            if config.rope == "mmpretrain" and self.backbone.vit.rope is not None:
                self.backbone.vit.rope = MMPretrainRope(vit.embed_dim // vit.num_heads)
        self.ptm_enabled = config.ptm_loss_weight > 0
        if not (config.final_norm or self.ptm_enabled):
            self.backbone.vit.norm = nn.Identity()
        self.text_encoder = None
        if self.ptm_enabled:
            from methods.backbones.text import build_text_encoder

            self.text_encoder = build_text_encoder(config.text_encoder or _text_tower(config), frozen=True)
            self.register_buffer("_class_text", torch.zeros(0), persistent=False)
        self._ptm_dense: Tensor | None = None

    # ---------------------------------------------------------------------------------- construction
    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper", **fields: Any) -> VLTSegConfig:
        backbone = backbone or cls.backbones[0]
        ptm = fields.get("ptm_loss_weight", 0.0) > 0
        vit = vltseg_vit_config(backbone, scale, proj=ptm)
        base_name = "eva02_clip_vitl14_s4b" if backbone.startswith("eva02") else "clip_vitb16"
        cfg = build_vit_m2f_config(VLTSegConfig, base_name, scale, frozen=False, **fields)
        cfg.backbone, cfg.vit = backbone, vit
        if vit.family == "eva02":  # the re-implementation's SegDataPreProcessor
            cfg.image_mean, cfg.image_std = IMAGENET_MEAN, IMAGENET_STD
        else:
            cfg.image_mean, cfg.image_std = CLIP_MEAN, CLIP_STD
        if ptm and not cfg.text_encoder:
            cfg.text_encoder = "tiny" if scale == "miniature" else _TEXT_TOWERS[vit.family]
        return cfg

    @classmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return vltseg_recipe(scale, source)

    def param_groups(self, recipe: TrainRecipe) -> list[dict[str, Any]]:
        """``Method.param_groups`` with ``"<prefix>[norm]"`` rules expanded (:func:`expand_norm_rules`)."""
        rules = expand_norm_rules(self, recipe.param_rules)
        return super().param_groups(dataclasses.replace(recipe, param_rules=rules))

    # ---------------------------------------------------------------------------------- forward
    def extract_features(self, images: Tensor) -> list[Tensor]:
        out = self.backbone(self.normalize(images), after_block=self.after_block(),
                            project=self.ptm_enabled and self.training)
        if out.projected is not None:
            h, w = out.grid
            self._ptm_dense = out.projected[:, self.backbone.num_prefix_tokens:]  # [B, h*w, E]
            self._ptm_grid = (h, w)
        return list(self.neck(out.features))

    def class_text_embeddings(self) -> Tensor:
        """L2-normalised class-name embeddings [C, E] of the frozen text encoder (computed once)."""
        if self.text_encoder is None:
            raise RuntimeError("PTM is off (ptm_loss_weight=0): no text encoder")
        if self._class_text.numel() == 0 or self._class_text.device != self._mean.device:
            from datasets.labels import CITYSCAPES_CLASSES

            with torch.no_grad():
                emb = self.text_encoder.encode_with_templates(CITYSCAPES_CLASSES, [self.config.ptm_template])
            self._class_text = emb.float().to(self._mean.device)
        return self._class_text

    def ptm_loss(self, labels: Tensor) -> Tensor:
        """DenseCLIP-style pixel-text matching: CE(score / tau) with score = <z_pixel, t_class> (cosine)."""
        dense, (h, w) = self._ptm_dense, self._ptm_grid
        text = self.class_text_embeddings().to(dense.dtype)
        score = F.normalize(dense, dim=-1) @ text.t()  # [B, h*w, C]
        score = score.transpose(1, 2).reshape(dense.shape[0], -1, h, w) / self.config.ptm_temperature
        score = F.interpolate(score.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(score, labels.long(), ignore_index=255) * self.config.ptm_loss_weight

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        losses = super().training_step(images, labels)
        if self.ptm_enabled:
            losses["loss_ptm"] = self.ptm_loss(labels)
            self._ptm_dense = None
        return losses

    # ---------------------------------------------------------------------------------- weights
    def pretrained_loaders(self) -> dict[str, Callable]:
        return {file: self._load_official for file in self.pretrained_files(self.config)}

    def _load_official(self, path) -> KeyReport:
        """The official CLIP / EVA-CLIP file: image tower (+ text tower for PTM). Pretrained tensors that the
        re-implementation's architecture has no place for are listed as ignored, not unexpected."""
        report = self.backbone.load_official(path)
        skipped: list[str] = []
        if not self.config.attn_inner_norm:
            skipped.append(".attn.inner_attn_ln.")
        if not (self.config.final_norm or self.ptm_enabled):
            skipped += ["visual.norm.", "visual.ln_post."]
        move_to_ignored(report, tuple(skipped))
        k_bias = [k for k in report.missing if k.endswith(".attn.k_proj.bias")]
        if k_bias:
            report.missing = [k for k in report.missing if k not in k_bias]
            report.converted = list(report.converted) + [f"key bias of {len(k_bias)} blocks kept at 0 (not in the "
                                                         "file; trainable as in the re-implementation)"]
        if self.text_encoder is not None:
            text = self.text_encoder.load_official(path)
            report.missing = list(report.missing) + ["text_encoder." + k for k in text.missing]
            report.unexpected = list(report.unexpected) + text.unexpected
            report.converted = list(report.converted) + [f"text tower: {len(text.missing)} missing"]
        return report

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A Zenodo checkpoint of the re-implementation (mmseg: ``backbone.*`` of ``ViTEVA02WithXAttn`` or of
        its BEiT-style ``EVA02`` class, with ``fpn1``/``fpn2``, and the mmdet ``decode_head.*``) -> our keys.
        A checkpoint of this implementation passes through unchanged."""
        self._conversion_notes: list[str] = []
        if not _is_mmseg_checkpoint(state):
            return state
        from methods.backbones.checkpoints import convert_for_backbone

        head = convert_mmdet_head(state)
        out = dict(head.tensors)
        left = dict(head.unmatched)
        self._conversion_notes.append(f"mmseg VLTSeg checkpoint (head naming {head.style}) -> this implementation")
        backbone: dict[str, Tensor] = {}
        for key, value in head.rest.items():
            if not key.startswith("backbone."):
                left[key] = value
                continue
            rel = key[len("backbone."):]
            m = re.match(r"^(fpn[1-4])\.(.*)$", rel)
            if m:
                sub = re.sub(r"^0\.", "", m.group(2)) if m.group(1) == "fpn2" else m.group(2)
                if self.config.neck == "simple_fpn":
                    out[f"neck.{m.group(1)}.{sub}"] = value
                else:
                    left[key] = value
                continue
            backbone[rel] = value
        if backbone:
            ignored: list[str] = []
            if any(k.startswith("layers.") for k in backbone):  # mmpretrain ViTEVA02WithXAttn
                backbone, notes, ignored = mmpretrain_eva02_to_eva_clip(
                    backbone, keep_k_bias=self.config.vit.family == "eva02" and self.config.k_bias)
                self._conversion_notes += notes
            layout = "eva_clip" if self.config.vit.family == "eva02" else None
            converted, report = convert_for_backbone(backbone, self.backbone, layout=layout)
            zero_k = [k for k in report.missing if k.endswith(".attn.k_proj.bias")]
            for k in zero_k:  # checkpoints of the BEiT-style EVA02 class have no key bias: it is zero there
                converted[k] = torch.zeros_like(self.backbone.state_dict()[k], device="cpu")
            if zero_k:
                self._conversion_notes.append(f"key bias of {len(zero_k)} blocks set to 0 (not in the checkpoint)")
            out.update({"backbone." + k: v for k, v in converted.items()})
            left.update({"backbone." + k: backbone[k] for k in report.unexpected if k in backbone})
            self._conversion_notes += [f"backbone ({report.layout}): " + "; ".join(report.converted)]
            if ignored or report.ignored:
                self._conversion_notes.append(f"ignored {len(ignored) + len(report.ignored)} rotary-table keys")
        out.update(left)
        return out

    def load_checkpoint(self, state, *, strict: bool = False) -> KeyReport:
        report = super().load_checkpoint(state, strict=strict)
        report.converted = list(getattr(self, "_conversion_notes", []))
        return report


def _text_tower(config: VLTSegConfig) -> str:
    return "tiny" if config.scale == "miniature" else _TEXT_TOWERS[config.vit.family]
