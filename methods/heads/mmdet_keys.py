"""Key names of the mmdet / mmseg Mask2Former head, and their mapping onto :class:`Mask2FormerHead`.

Rein, SET, Vireo and the VLTSeg re-implementation release mmseg-1.x checkpoints whose ``decode_head.*``
part is mmdet's ``Mask2FormerHead`` (mmseg 1.x subclasses it without adding parameters). This module
knows those names, written from the module structure of mmdet (no code copied):

- ``pixel_decoder`` (MSDeformAttnPixelDecoder): ``input_convs.i`` (1x1 ConvModule with GroupNorm:
  ``conv``, ``gn``; ``input_convs[0]`` takes the *coarsest* map), ``encoder.layers.n`` (deformable
  encoder layers), ``level_encoding`` (nn.Embedding [levels, D]), ``lateral_convs.i`` (1x1 ConvModule,
  no conv bias), ``output_convs.i`` (3x3 ConvModule + ReLU, no conv bias), ``mask_feature`` (1x1 conv).
- ``transformer_decoder`` (Mask2FormerTransformerDecoder): ``layers.n`` and ``post_norm``.
- head: ``query_embed`` / ``query_feat`` (nn.Embedding [Q, D]), ``level_embed`` (nn.Embedding [3, D]),
  ``cls_embed`` (Linear D -> C+1), ``mask_embed`` (Sequential Linear/ReLU x3: indices 0, 2, 4).

Two naming styles exist for the transformer layers:

- ``"mmdet3"`` (mmdet 3.x, used with mmseg 1.x: Rein, SET, Vireo, VLTSeg): encoder layers have
  ``self_attn`` (MultiScaleDeformableAttention: ``sampling_offsets``, ``attention_weights``,
  ``value_proj``, ``output_proj``), ``ffn.layers.0.0`` / ``ffn.layers.1`` (mmcv FFN) and ``norms.0/1``;
  decoder layers have ``cross_attn.attn.*`` and ``self_attn.attn.*`` (mmcv MultiheadAttention wrapping
  ``nn.MultiheadAttention``: ``in_proj_weight``, ``in_proj_bias``, ``out_proj``), ``ffn`` and
  ``norms.0/1/2`` (after cross-attn, self-attn, FFN).
- ``"mmcv1"`` (mmdet 2.x / mmcv 1.x ``BaseTransformerLayer``, used by mmseg-0.x code such as tqdm):
  ``attentions.k`` numbered in operation order (decoder: ``attentions.0`` = cross-attention and
  ``attentions.1`` = self-attention for the usual cross-self-FFN order) and ``ffns.0.layers.*``.

Public functions: :func:`mmdet_head_key` (one key), :func:`convert_mmdet_head` (a whole state dict),
:func:`detect_mmdet_style`, and :func:`mmdet_mask2former_template` (names and shapes of the reference
head for a given :class:`Mask2FormerConfig`, used to generate synthetic official checkpoints in tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor

from .mask2former import Mask2FormerConfig

__all__ = [
    "MMDET_STYLES",
    "MmdetHeadConversion",
    "convert_mmdet_head",
    "detect_mmdet_style",
    "mmdet_head_key",
    "mmdet_mask2former_template",
    "synthetic_state_dict",
]

MMDET_STYLES = ("mmdet3", "mmcv1")

# (pattern on the mmdet key relative to the head, replacement giving our Mask2FormerHead key)
_COMMON_RULES: tuple[tuple[str, str], ...] = (
    (r"^pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.conv\.", r"pixel_decoder.\1.\2.0."),
    (r"^pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.gn\.", r"pixel_decoder.\1.\2.1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.", r"pixel_decoder.layers.\1.norm1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.", r"pixel_decoder.layers.\1.norm2."),
    (r"^pixel_decoder\.level_encoding\.weight$", r"pixel_decoder.level_embed"),
    (r"^pixel_decoder\.mask_feature\.(weight|bias)$", r"pixel_decoder.mask_feature.\1"),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.([012])\.", r"layers.\1.norms.\2."),
    (r"^transformer_decoder\.post_norm\.", r"decoder_norm."),
    (r"^(query_embed|query_feat)\.weight$", r"\1.weight"),
    (r"^level_embed\.weight$", r"level_embed"),
    (r"^cls_embed\.", r"class_predictor."),
    (r"^mask_embed\.([024])\.", r"mask_embed.\1."),
)

_MMDET3_RULES: tuple[tuple[str, str], ...] = (
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.", r"pixel_decoder.layers.\1.self_attn."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"pixel_decoder.layers.\1.ffn.0."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"pixel_decoder.layers.\1.ffn.2."),
    (r"^transformer_decoder\.layers\.(\d+)\.cross_attn\.attn\.", r"layers.\1.cross_attn."),
    (r"^transformer_decoder\.layers\.(\d+)\.self_attn\.attn\.", r"layers.\1.self_attn."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"layers.\1.ffn.0."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"layers.\1.ffn.2."),
)


def _mmcv1_rules(decoder_order: str) -> tuple[tuple[str, str], ...]:
    first, second = ("cross_attn", "self_attn") if decoder_order == "cross_self_ffn" else ("self_attn", "cross_attn")
    return (
        (r"^pixel_decoder\.encoder\.layers\.(\d+)\.attentions\.0\.", r"pixel_decoder.layers.\1.self_attn."),
        (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", r"pixel_decoder.layers.\1.ffn.0."),
        (r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.", r"pixel_decoder.layers.\1.ffn.2."),
        (r"^transformer_decoder\.layers\.(\d+)\.attentions\.0\.attn\.", rf"layers.\1.{first}."),
        (r"^transformer_decoder\.layers\.(\d+)\.attentions\.1\.attn\.", rf"layers.\1.{second}."),
        (r"^transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.", r"layers.\1.ffn.0."),
        (r"^transformer_decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.", r"layers.\1.ffn.2."),
    )


def _rules(style: str, decoder_order: str) -> list[tuple[re.Pattern, str]]:
    if style not in MMDET_STYLES:
        raise ValueError(f"unknown mmdet naming style {style!r}; expected one of {MMDET_STYLES}")
    specific = _MMDET3_RULES if style == "mmdet3" else _mmcv1_rules(decoder_order)
    return [(re.compile(p), r) for p, r in (*specific, *_COMMON_RULES)]


def mmdet_head_key(key: str, *, style: str = "mmdet3", decoder_order: str = "cross_self_ffn") -> str | None:
    """One mmdet Mask2FormerHead key (relative to the head, e.g. ``cls_embed.weight``) -> the
    :class:`Mask2FormerHead` key (``class_predictor.weight``), or None when the key is not part of the
    standard head (a method-specific extra such as Rein's ``querys2feat``)."""
    for pattern, repl in _rules(style, decoder_order):
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return None


def detect_mmdet_style(keys) -> str:
    """``"mmcv1"`` when the transformer layers use ``attentions.k`` / ``ffns.k`` names, else ``"mmdet3"``."""
    for k in keys:
        if ".attentions." in k or ".ffns." in k:
            return "mmcv1"
    return "mmdet3"


@dataclass
class MmdetHeadConversion:
    """Result of :func:`convert_mmdet_head`.

    ``tensors``: converted tensors under ``dst_prefix``; ``unmatched``: keys under ``src_prefix`` that are
    not standard head keys (original names; the caller maps them or reports them as unexpected);
    ``rest``: keys outside ``src_prefix``, untouched; ``style``: the naming style used.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    unmatched: dict[str, Tensor] = field(default_factory=dict)
    rest: dict[str, Tensor] = field(default_factory=dict)
    style: str = "mmdet3"


def convert_mmdet_head(state: Mapping[str, Tensor], *, src_prefix: str = "decode_head.",
                       dst_prefix: str = "decode_head.", style: str | None = None,
                       decoder_order: str = "cross_self_ffn") -> MmdetHeadConversion:
    """Rename the mmdet Mask2Former head keys of ``state`` (under ``src_prefix``) to our head's keys
    (under ``dst_prefix``). ``style=None`` detects the naming style from the keys. Tensors are not copied
    or reshaped (every mapped tensor has the same shape in both implementations: ``level_embed`` /
    ``level_encoding`` are [levels, D] tables either way)."""
    head_keys = [k for k in state if k.startswith(src_prefix)]
    style = style or detect_mmdet_style(head_keys)
    rules = _rules(style, decoder_order)
    out = MmdetHeadConversion(style=style)
    for key, value in state.items():
        if not key.startswith(src_prefix):
            out.rest[key] = value
            continue
        rel = key[len(src_prefix):]
        for pattern, repl in rules:
            if pattern.search(rel):
                out.tensors[dst_prefix + pattern.sub(repl, rel, count=1)] = value
                break
        else:
            out.unmatched[key] = value
    return out


def mmdet_mask2former_template(cfg: Mask2FormerConfig, *, style: str = "mmdet3", prefix: str = "decode_head.",
                               query_tables: bool = True) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the mmdet/mmseg ``Mask2FormerHead`` state dict for ``cfg`` (what a released
    mmseg checkpoint holds under ``decode_head.``). ``query_tables=False`` leaves out ``query_embed`` /
    ``query_feat`` (Rein deletes both). Written from mmdet's module structure, independently of
    :class:`Mask2FormerHead`, so tests can check the mapping against it."""
    if style not in MMDET_STYLES:
        raise ValueError(f"unknown mmdet naming style {style!r}; expected one of {MMDET_STYLES}")
    d, heads, lv, pts = cfg.hidden_dim, cfg.num_heads, cfg.num_feature_levels, cfg.deform_points
    ins = list(cfg.in_channels)
    t: dict[str, tuple[int, ...]] = {}
    pd = "pixel_decoder."
    for i in range(lv):  # coarsest first: input_convs[i] takes in_channels[-1 - i]
        t[f"{pd}input_convs.{i}.conv.weight"] = (d, ins[len(ins) - 1 - i], 1, 1)
        t[f"{pd}input_convs.{i}.conv.bias"] = (d,)
        t[f"{pd}input_convs.{i}.gn.weight"] = (d,)
        t[f"{pd}input_convs.{i}.gn.bias"] = (d,)
    for n in range(cfg.pixel_decoder_layers):
        base = f"{pd}encoder.layers.{n}."
        attn = base + ("self_attn." if style == "mmdet3" else "attentions.0.")
        ffn = base + ("ffn.layers." if style == "mmdet3" else "ffns.0.layers.")
        t[attn + "sampling_offsets.weight"] = (heads * lv * pts * 2, d)
        t[attn + "sampling_offsets.bias"] = (heads * lv * pts * 2,)
        t[attn + "attention_weights.weight"] = (heads * lv * pts, d)
        t[attn + "attention_weights.bias"] = (heads * lv * pts,)
        for proj in ("value_proj", "output_proj"):
            t[attn + f"{proj}.weight"] = (d, d)
            t[attn + f"{proj}.bias"] = (d,)
        t[ffn + "0.0.weight"] = (cfg.pixel_decoder_ffn, d)
        t[ffn + "0.0.bias"] = (cfg.pixel_decoder_ffn,)
        t[ffn + "1.weight"] = (d, cfg.pixel_decoder_ffn)
        t[ffn + "1.bias"] = (d,)
        for k in range(2):
            t[base + f"norms.{k}.weight"] = (d,)
            t[base + f"norms.{k}.bias"] = (d,)
    t[f"{pd}level_encoding.weight"] = (lv, d)
    for i in range(len(ins) - lv):  # the finer maps (stride 4) go through the FPN path
        t[f"{pd}lateral_convs.{i}.conv.weight"] = (d, ins[i], 1, 1)
        t[f"{pd}lateral_convs.{i}.gn.weight"] = (d,)
        t[f"{pd}lateral_convs.{i}.gn.bias"] = (d,)
        t[f"{pd}output_convs.{i}.conv.weight"] = (d, d, 3, 3)
        t[f"{pd}output_convs.{i}.gn.weight"] = (d,)
        t[f"{pd}output_convs.{i}.gn.bias"] = (d,)
    t[f"{pd}mask_feature.weight"] = (d, d, 1, 1)
    t[f"{pd}mask_feature.bias"] = (d,)
    td = "transformer_decoder."
    for n in range(cfg.decoder_layers):
        base = f"{td}layers.{n}."
        if style == "mmdet3":
            attns = [base + "cross_attn.attn.", base + "self_attn.attn."]
            ffn = base + "ffn.layers."
        else:
            attns = [base + "attentions.0.attn.", base + "attentions.1.attn."]
            ffn = base + "ffns.0.layers."
        for a in attns:
            t[a + "in_proj_weight"] = (3 * d, d)
            t[a + "in_proj_bias"] = (3 * d,)
            t[a + "out_proj.weight"] = (d, d)
            t[a + "out_proj.bias"] = (d,)
        t[ffn + "0.0.weight"] = (cfg.decoder_ffn, d)
        t[ffn + "0.0.bias"] = (cfg.decoder_ffn,)
        t[ffn + "1.weight"] = (d, cfg.decoder_ffn)
        t[ffn + "1.bias"] = (d,)
        for k in range(3):
            t[base + f"norms.{k}.weight"] = (d,)
            t[base + f"norms.{k}.bias"] = (d,)
    t[f"{td}post_norm.weight"] = (d,)
    t[f"{td}post_norm.bias"] = (d,)
    if query_tables:
        t["query_embed.weight"] = (cfg.num_queries, d)
        t["query_feat.weight"] = (cfg.num_queries, d)
    t["level_embed.weight"] = (lv, d)
    t["cls_embed.weight"] = (cfg.num_classes + 1, d)
    t["cls_embed.bias"] = (cfg.num_classes + 1,)
    for i in (0, 2, 4):
        t[f"mask_embed.{i}.weight"] = (d, d)
        t[f"mask_embed.{i}.bias"] = (d,)
    return {prefix + k: v for k, v in t.items()}


def synthetic_state_dict(template: Mapping[str, tuple[int, ...]], *, seed: int = 0) -> dict[str, Tensor]:
    """Random float32 tensors for a name -> shape template (for tests of checkpoint loading)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(tuple(shape), generator=gen) for k, shape in template.items()}
