"""Vireo (NeurIPS 2025, arXiv 2506.09881), reference code ``anonymouse-9c53tp182bvz/Vireo`` (mmseg 1.x, a fork
of Rein). shared/specs/methods.md §5.

Rein (``methods/rein.py``) with three additions: geometry (frozen Depth-Anything-V2 encoder tokens) and
language (frozen CLIP ViT-L/14@336 class embeddings) steer the per-layer tokens, and the Mask2Former head gets
a multi-level fusion, a text-based coarse mask prior that anchors the queries, and a classifier through text.

**Backbones.** Frozen DINOv2-L (patch 16, 32x32 tokens at 512, Rein's conversion) and a frozen
Depth-Anything-V2 ViT-L *encoder* (same architecture, same patch-16 conversion; ``pretrained.*`` keys of
``depth_anything_v2_vitl.pth``, the DPT depth head is ignored) run on the same normalised image. The DA-V2
patch tokens after every block i (``d_i``) feed block i's token update. Both are frozen (2 x 304.2M).

**Text.** The class list is the reference ``open_vocab/cityscapes.json``: the 19 Cityscapes classes with
"person with clothes,people,human" for person, plus a 20th entry "background" that plays Mask2Former's
no-object class. Every (class, template) prompt is embedded once by the frozen CLIP text tower and
L2-normalised ([K, P, 768]); the tower itself is **not** part of the module tree (no parameters, no
checkpoint keys, not moved by ``.to``): it is built on demand (official ``ViT-L-14-336px.pt`` when loaded,
else a seeded random initialisation) and only its outputs are kept, as buffers:

- ``reins.text_features`` [K, 768]: per class, the mean over the 32 "select" templates
  (:data:`VIREO_SELECT_TEMPLATES`) of the normalised embeddings, re-normalised (the backbone module);
- ``decode_head.class_predictor.text_features`` [K, 80, 768]: per class and per template over all 80 ImageNet
  templates (the head; the prior uses them per template, the classifier their normalised mean).

Both buffers are persistent, so a trained checkpoint carries the text it was trained with; official
checkpoints do not store them (the reference keeps them as plain attributes), and then they come from the
CLIP file. Class names containing ", " are split and the sub-names' embeddings averaged per template, as the
reference does (the Cityscapes person entry uses bare commas and is therefore one prompt).

**GeoText tokens** (:class:`GeoTextTokens`, the reference ``VireoReins``), after every DINOv2 block i, on the
patch tokens f [N, C] (class token untouched):

- T_i = A_i B_i (m=100 tokens, rank 16), as Rein;
- text context: t = Linear(768->1024)(text_features) [K, C]; T_i' = T_i + softmax(T_i t^T) t (softmax over the
  K texts, **no** 1/sqrt(C) scaling);
- fused attention S = softmax([g_i (f T_i'^T) + (1 - g_i) (d_i T_i'^T)] / sqrt(C)) over the m tokens, with the
  depth/visual gate g_i = sigmoid(w_i), w_i one learnable scalar per layer. **w_i is initialised to 0.5**, so
  the gate starts at sigmoid(0.5) = 0.6225, not at 0.5: the spec says "w_i ... initialised to 0.5" of the
  scalar that goes through the sigmoid, and the reference builds ``fusion_weights`` as ``tensor(0.5)``. d_i is
  resampled linearly along the token axis when its token count differs from f's (never at 512: both grids
  are 32x32);
- the rest is Rein's: token 0 dropped after the softmax, dF = MLP_delta(S[:, 1:] MLP_t2f(T_i'[1:]) + f),
  f' = f + alpha dF;
- the query link (Rein's :class:`~methods.rein.QueryLink`) reads the *raw* tokens T (no text context), as the
  reference's ``return_auto`` does.

Trainable parameters of the token module = **3,777,561** (the reference count) =
Rein's 2,990,081 (A 24x100x16 + B 24x16x1024 + alpha 1 + two Linear(1024,1024) 2x1,049,600 + link
Linear(1024,256) 262,400 + Linear(768,256) 196,864) + text projection Linear(768,1024) 787,456 (768x1024
weights + 1024 bias) + 24 gate scalars w_i: 2,990,081 + 787,456 + 24 = 3,777,561.

**Head** (reference ``VireoMask2FormerHead``), Rein's token-linked Mask2Former plus:

- **DQCM** (:class:`DynamicQueryCorrection`, ``decode_head.dqcm``): the 4 levels are bilinearly resized to the
  stride-4 map, each passes one *shared* attention gate (per-pixel channel gate Conv1x1 C->C/16, ReLU,
  Conv1x1 C/16->C, sigmoid, multiplied in; then a spatial gate sigmoid(Conv3x3 C->1) multiplied in; no global
  pooling, as in the reference), the 4 gated maps are concatenated and fused by a Conv1x1 4C->C; the result is
  added to the stride-4 map (residual). 4,336,705 parameters at C=1024.
- **CMPE** coarse mask prior (:class:`CoarseMaskPrior`, ``decode_head.prior``): the fused stride-4 map is
  projected 1024->768 (Conv1x1), dotted with every (class, template) text embedding of the 19 classes (the
  background entry is left out) and a Conv3x3 over the 80 templates (P -> 1 channels, shared by all classes)
  gives coarse logits [B, 19, H/4, W/4]. Computed here in the equivalent cheap order (the template
  convolution folded into a [19, 768, 3, 3] kernel; exact, tested against the reference order). Prior loss
  (:func:`coarse_prior_loss`): BCE-with-logits against the one-hot of the nearest-downsampled label, ignore-255
  pixels left out, mean over the kept pixels x classes, **weight 0.1** (``loss_prior``). Query anchors:
  softmax over the pixels of sigmoid(prior) pools the fused map into one 1024-d feature per class ->
  Linear(1024->256) -> similarity with 100 learnable prototypes (N(0,1) init) -> softmax over the classes ->
  per-prototype mixture of the class features [B, 100, 256]. The anchors are **added to the query positional
  embedding** Q of the token link, and the query content is ``querys2feat(Q + anchors)`` (the reference adds
  the anchors before ``querys2feat``). 1,075,921 parameters.
- **Classification through text** (:class:`TextClassifier`, ``decode_head.class_predictor``):
  Linear(256->768)(decoder output) . (class text embeddings, normalised mean over the 80 templates)^T -> 20
  logits, "background" = no-object, no temperature; xavier-uniform weight, zero bias.
- Mask BCE and Dice on full masks bilinearly upsampled to the label size (``mask_loss_on_points=False``); the
  Hungarian matcher stays point-sampled. The class loss is averaged over batch x queries
  (``class_loss_norm="queries"``: the reference head passes no ``avg_factor``; Rein's divides by the sum of
  the class weights, mostly 0.1, which would make the term several times stronger). Everything else is Rein's Mask2Former (100
  queries, 2/5/5, no-object 0.1). The reference head also defines ``feat_conv`` (Conv1x1 256->256) and ``out_conv`` (Conv1x1 256->1),
  which its forward never uses: they are not built here (66,049 parameters fewer than the reference total)
  and their keys are reported as ignored when an official checkpoint is loaded.

**Open vocabulary.** :meth:`Vireo.set_class_names` re-embeds arbitrary class names (+ "background") with the
frozen text tower for both the backbone tokens and the head; ``predict`` then returns ``len(names)`` channels.
The harness metrics stay 19-class (training needs the 19 Cityscapes names).

**Recipe** (:func:`vireo_recipe`): Rein's 512 recipe (40k iterations, batch 4, AdamW 1e-4, wd 0.05, poly,
no warmup, all GTA images; seed 42 in the reference runtime). The Cityscapes-source config (``..._citys.py``)
is the same 512 recipe plus grad-clip max L2 norm 0.1. Evaluation variant ``rein``.

**Official checkpoints** (mmseg 1.x ``state_dict``; the backbone keeps only its ``vireo`` keys):
``backbone.vireo.*`` (Rein's token keys + ``text_embed`` + ``fusion_weights.{i}``) -> ``reins.*``; the mmdet
``decode_head.*`` (``cls_embed`` is the Linear 256->768 here) + ``querys2feat`` -> as Rein; the extras by the
table :data:`VIREO_HEAD_KEYS` (``DQCM.attention_gate.channel_attention`` -> ``dqcm.gate.channel``,
``DQCM.linear_fuse`` -> ``dqcm.fuse``, ``prior.coarse_embed`` -> ``prior.template_conv``,
``prior.query_proto`` -> ``prior.prototypes``, ...). A full-weights file's ``backbone.depth_anything.*`` keys
go to ``depth_backbone`` and its DINOv2 ``backbone.*`` keys to ``backbone``.

Assumptions (documented where the reference could not be read): the 32 "select" templates are CAT-Seg's
``IMAGENET_TEMPLATES_SELECT_CLIP`` list (the reference imports ``IMAGENET_TEMPLATES_SELECT_CLIP`` from a
vendored ``third_party/imagenet_templates.py`` that is not in the snapshot; the vendored ``clip.load(...,
prompt_depth, prompt_length)`` is CAT-Seg's, and that list has exactly the 32 entries the spec names). It is
*not* a subset of the 80 ImageNet templates. ``backbone_templates`` in the config can replace it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from methods.backbones.text import IMAGENET_TEMPLATES, CLIPTextEncoder, fill_template, text_config
from methods.backbones.vit import ViTBackbone, ViTConfig, vit_config
from methods.base import TrainRecipe
from methods.heads.criterion import CLASS_LOSS_NORMS
from methods.registry import register_method
from methods.rein import Rein, ReinConfig, ReinTokens, rein_recipe
from methods.weights import KeyReport

__all__ = [
    "BACKGROUND_NAME",
    "CoarseMaskPrior",
    "DynamicQueryCorrection",
    "GEOTEXT_REFERENCE_PARAMS",
    "GeoTextTokens",
    "SpatialChannelGate",
    "TextClassifier",
    "VIREO_CLASS_NAMES",
    "VIREO_HEAD_KEYS",
    "VIREO_SELECT_TEMPLATES",
    "Vireo",
    "VireoConfig",
    "class_template_embeddings",
    "coarse_prior_loss",
    "resample_tokens",
    "vireo_recipe",
]

VIREO_CLASS_NAMES: tuple[str, ...] = tuple(
    "person with clothes,people,human" if c == "person" else c for c in CITYSCAPES_CLASSES)
"""The 19 class prompts of the reference ``open_vocab/cityscapes.json`` (person is "person with
clothes,people,human"; bare commas, so it is embedded as one name)."""

BACKGROUND_NAME = "background"
"""The 20th text entry; its logit is Mask2Former's no-object class."""

VIREO_SELECT_TEMPLATES: tuple[str, ...] = (
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "This is a photo of a {}",
    "This is a photo of a small {}",
    "This is a photo of a medium {}",
    "This is a photo of a large {}",
    "This is a masked photo of a {}",
    "This is a masked photo of a small {}",
    "This is a masked photo of a medium {}",
    "This is a masked photo of a large {}",
    "This is a cropped photo of a {}",
    "This is a cropped photo of a small {}",
    "This is a cropped photo of a medium {}",
    "This is a cropped photo of a large {}",
    "A photo of a {} in the scene",
    "a bad photo of the {} in the scene",
    "a photo of the large {} in the scene",
    "a photo of the small {} in the scene",
    "a cropped photo of a {} in the scene",
    "a photo of a masked {} in the scene",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "This is a {} in the scene",
    "This is the {} in the scene",
    "This is one {} in the scene",
    "There is a masked {} in the scene",
    "There is the masked {} in the scene",
    "This is a masked {} in the scene",
    "This is the masked {} in the scene",
    "This is one masked {} in the scene",
)
"""The backbone's 32 "select" templates. Assumption (module docstring): CAT-Seg's
``IMAGENET_TEMPLATES_SELECT_CLIP`` prompt list, which the reference imports under that name."""

GEOTEXT_REFERENCE_PARAMS = 3_777_561
"""Trainable parameters of the reference ``VireoReins`` for DINOv2-L (24 layers, C=1024, m=100, r=16,
768-d text): Rein's 2,990,081 + Linear(768->1024) 787,456 + 24 gates."""


# ------------------------------------------------------------------------------------------ recipe
_VIREO_CONFIGS = {
    "gta5": "anonymouse-9c53tp182bvz/Vireo configs/dinov2_domain/vireo_dinov2_mask2former_512x512_bs1x4.py",
    "cityscapes": "anonymouse-9c53tp182bvz/Vireo configs/dinov2_domain/vireo_dinov2_mask2former_512x512_bs1x4_citys.py",
}


def vireo_recipe(scale: str, source: str = "gta5", **changes: Any) -> TrainRecipe:
    """Vireo's training recipe (methods.md §5.2), or its CPU-sized twin for ``scale="miniature"``.

    Both sources use Rein's 512 GTA recipe (:func:`methods.rein.rein_recipe`, ``"gta5"``): 40k iterations,
    batch 4, AdamW 1e-4 (wd 0.05; decay 0 for norms, ``query_embed``, ``level_embed``, ``learnable_tokens``
    and the token scale), poly 0.9 without warmup, short-edge choices 256..1024 (max 2048), crop 512, cat-max
    0.75, flip, photometric distortion. The Cityscapes-source config adds grad-clip max L2 norm 0.1.
    Evaluation variant ``rein`` (C at 1024x512; C -> ACDC: ACDC val at 960x540).
    """
    if source not in _VIREO_CONFIGS:
        raise ValueError(f"Vireo has a training recipe for sources {tuple(_VIREO_CONFIGS)}, not {source!r}")
    base = rein_recipe(scale, "gta5")
    origin = f"{_VIREO_CONFIGS[source]} (seed 42, fp32)"
    if scale == "miniature":
        origin = "miniature twin of " + origin
    recipe = base.replace(source=origin, eval_variant="rein",
                          grad_clip=0.1 if source == "cityscapes" else None)
    return recipe.replace(**changes)


# ------------------------------------------------------------------------------------------ text
def class_template_embeddings(encoder: CLIPTextEncoder, names: Sequence[str], templates: Sequence[str],
                              batch_size: int = 256) -> Tensor:
    """L2-normalised CLIP embeddings [K, P, E] of every (name, template) prompt.

    As the reference: a name containing ", " is split, each part is embedded with every template, and the parts'
    normalised embeddings are averaged per template and re-normalised. Prompts are encoded with the token
    sequence cut after the longest [EOT] (exact: the text tower is causal and reads the [EOT] feature)."""
    if not names or not templates:
        raise ValueError("class_template_embeddings needs at least one name and one template")
    parts = [n.split(", ") if ", " in n else [n] for n in names]
    unique = list(dict.fromkeys(p for ps in parts for p in ps))
    prompts = [fill_template(t, p) for p in unique for t in templates]
    tokens = encoder.tokenize(prompts)
    tokens = tokens[:, : int(encoder.eot_indices(tokens).max()) + 1]
    emb = torch.cat([encoder.encode_tokens(tokens[i:i + batch_size], normalize=True)
                     for i in range(0, len(tokens), batch_size)]).view(len(unique), len(templates), -1)
    index = {p: i for i, p in enumerate(unique)}
    out = []
    for ps in parts:
        e = emb[[index[p] for p in ps]]
        out.append(e[0] if len(ps) == 1 else F.normalize(e.mean(0), dim=-1))
    return torch.stack(out)


def resample_tokens(tokens: Tensor, length: int) -> Tensor:
    """[B, N, C] -> [B, length, C] by linear interpolation along the token axis (align_corners=False, as the
    reference resamples the DA-V2 tokens); unchanged when N == length."""
    if tokens.shape[-2] == length:
        return tokens
    return F.interpolate(tokens.transpose(-1, -2), size=length, mode="linear",
                         align_corners=False).transpose(-1, -2)


def _replace_buffer(module: nn.Module, name: str, value: Tensor) -> None:
    """Set a buffer's values: in place when the shape is unchanged (the tensor object stays the one DDP
    registered), else rebound to a new tensor (open-vocabulary class lists of another length)."""
    old = getattr(module, name)
    value = value.detach().to(old.device, old.dtype)
    if value.shape == old.shape:
        with torch.no_grad():
            old.copy_(value)
    else:
        setattr(module, name, value.clone())


# ------------------------------------------------------------------------------------------ GeoText tokens
class GeoTextTokens(ReinTokens):
    """Vireo's GeoText tokens (the reference ``VireoReins``): Rein's LoRA tokens, conditioned on class text
    and attending with a learnable depth/visual gate per layer.

    Extra parameters (reference names): ``text_embed`` (Linear text_dim -> C, shared by all layers) and
    ``fusion_weights`` (one scalar w_i per layer, init ``gate_init`` = 0.5; the gate is sigmoid(w_i)).
    Buffer ``text_features`` [K, text_dim]: the class text embeddings (mean over the select templates).
    ``forward(x, layer, depth)`` needs the DA-V2 patch tokens of the same block, ``depth`` [B, N_d, C].
    """

    def __init__(self, num_layers: int, embed_dim: int, *, text_dim: int = 768, num_texts: int = 20,
                 gate_init: float = 0.5, **kwargs: Any):
        super().__init__(num_layers, embed_dim, **kwargs)
        self.text_dim, self.gate_init = text_dim, float(gate_init)
        self.text_embed = nn.Linear(text_dim, embed_dim)
        self.fusion_weights = nn.ParameterList(
            nn.Parameter(torch.tensor(self.gate_init)) for _ in range(num_layers))
        self.register_buffer("text_features", torch.zeros(num_texts, text_dim))

    def set_text_features(self, text: Tensor) -> None:
        """Replace the class text embeddings [K, text_dim] (any K: open-vocabulary use)."""
        if text.dim() != 2 or text.shape[1] != self.text_dim:
            raise ValueError(f"text features must be [K, {self.text_dim}], got {tuple(text.shape)}")
        _replace_buffer(self, "text_features", text)

    # ----------------------------------------------------------------------------- pieces
    def gate(self, layer: int) -> Tensor:
        """g_i = sigmoid(w_i): the weight of the visual logits (1 - g_i weighs the depth logits)."""
        return torch.sigmoid(self.fusion_weights[layer])

    def text_context(self) -> Tensor:
        """The projected class texts t = Linear(text_features) [K, C]."""
        return self.text_embed(self.text_features)

    def condition_tokens(self, tokens: Tensor, text: Tensor | None = None) -> Tensor:
        """T' = T + softmax(T t^T) t: each token attends to the K projected texts (no scaling)."""
        text = self.text_context() if text is None else text
        attn = (tokens @ text.t()).softmax(dim=-1)
        return tokens + attn @ text

    def attention_logits(self, feats: Tensor, tokens: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        """[g (f T^T) + (1 - g) (d T^T)] / sqrt(C) [B, N, m] (g = sigmoid(w_layer); d = DA-V2 tokens resampled to
        N). Without softmax (``use_softmax=False``) the reference uses the raw visual logits f T^T."""
        if depth is None:
            raise ValueError("GeoTextTokens needs the Depth-Anything-V2 tokens of the same block: "
                             "call forward(x, layer, depth) with depth [B, N, C]")
        visual = feats @ tokens.t()
        if not self.use_softmax:
            return visual
        geometric = resample_tokens(depth, feats.shape[-2]).to(feats.dtype) @ tokens.t()
        g = self.gate(layer).to(visual.dtype)
        return (g * visual + (1 - g) * geometric) * self.embed_dim ** -0.5

    def delta(self, feats: Tensor, tokens: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        """dF = MLP_delta(S[:, :, 1:] MLP_t2f(T'[1:]) + f) with the gated attention S."""
        attn = self.attention(self.attention_logits(feats, tokens, layer, depth), layer)
        return self.mlp_delta_f(attn[..., 1:] @ self.mlp_token2feat(tokens[1:]) + feats)

    def refine(self, feats: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        """f' = f + alpha dF, with the text-conditioned tokens T_i' of this layer."""
        tokens = self.condition_tokens(self.get_tokens(layer))
        return feats + self.delta(feats, tokens, layer, depth) * self.scale

    def forward(self, x: Tensor, layer: int, depth: Tensor | None = None, num_prefix_tokens: int = 1) -> Tensor:
        """Tokens after block ``layer`` [B, prefix + N, C] and the DA-V2 patch tokens of that block [B, N_d, C]
        -> refined tokens; prefix (class) tokens unchanged."""
        if num_prefix_tokens:
            prefix, feats = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
            return torch.cat([prefix, self.refine(feats, layer, depth)], dim=1)
        return self.refine(x, layer, depth)

    def after_block_with(self, depth_tokens: Sequence[Tensor], num_prefix_tokens: int = 1
                         ) -> Callable[[int, Tensor, tuple[int, int]], Tensor]:
        """The ``ViTBackbone`` hook for one forward pass, given the DA-V2 patch tokens of every block."""
        if len(depth_tokens) != self.num_layers:
            raise ValueError(f"{len(depth_tokens)} depth token maps for {self.num_layers} layers")

        def hook(index: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
            return self(tokens, index, depth_tokens[index], num_prefix_tokens)

        return hook


# ------------------------------------------------------------------------------------------ head modules
class SpatialChannelGate(nn.Module):
    """DQCM's attention gate (reference ``AdaptiveAttentionGate``): x * sigmoid(Conv1x1(ReLU(Conv1x1(x))))
    per pixel (``channel``: C -> C/r -> C), then x * sigmoid(Conv3x3 C -> 1) (``spatial``)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                     nn.Conv2d(hidden, channels, 1), nn.Sigmoid())
        self.spatial = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel(x)
        return x * torch.sigmoid(self.spatial(x))


class DynamicQueryCorrection(nn.Module):
    """DQCM (reference ``DynamicQueryCorrectionModule``): every level bilinearly resized to the first (stride-4)
    map, one shared :class:`SpatialChannelGate`, concatenation, ``fuse`` Conv1x1 (L*C -> C). The caller adds
    the output to the stride-4 map."""

    def __init__(self, channels: int, num_levels: int = 4, reduction: int = 16):
        super().__init__()
        self.num_levels = num_levels
        self.gate = SpatialChannelGate(channels, reduction)
        self.fuse = nn.Conv2d(channels * num_levels, channels, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != self.num_levels:
            raise ValueError(f"DQCM expects {self.num_levels} maps, got {len(feats)}")
        size = feats[0].shape[-2:]
        gated = [self.gate(f if f.shape[-2:] == size else
                           F.interpolate(f, size=size, mode="bilinear", align_corners=False)) for f in feats]
        return self.fuse(torch.cat(gated, dim=1))


class CoarseMaskPrior(nn.Module):
    """CMPE (reference ``PriorGenerator``): coarse class logits from the fused stride-4 map and the per-template
    class texts, and per-query anchors pooled with them.

    ``feat_proj`` Conv1x1 C -> E, ``template_conv`` Conv3x3 P -> 1 over the per-template similarity maps,
    ``query_proj`` Linear C -> D, ``prototypes`` [Q, D] (N(0, 1)).
    """

    def __init__(self, in_channels: int, text_dim: int, num_templates: int, query_dim: int, num_queries: int):
        super().__init__()
        self.feat_proj = nn.Conv2d(in_channels, text_dim, 1)
        self.template_conv = nn.Conv2d(num_templates, 1, 3, padding=1)
        self.query_proj = nn.Linear(in_channels, query_dim)
        self.prototypes = nn.Parameter(torch.randn(num_queries, query_dim))

    def coarse_logits(self, feats: Tensor, text: Tensor) -> Tensor:
        """[B, C, H, W], text [T, P, E] -> [B, T, H, W]: Conv3x3_P(<feat_proj(x), text[t, p]>_E) per class t.
        The template convolution is folded into one [T, E, 3, 3] kernel (same values, no [B, T, P, H, W]
        tensor)."""
        aligned = self.feat_proj(feats)
        w = self.template_conv.weight[0]  # [P, 3, 3]
        if text.shape[1] != w.shape[0]:
            raise ValueError(f"the prior was built for {w.shape[0]} templates, the text has {text.shape[1]}")
        kernel = torch.einsum("pyx,tpe->teyx", w, text.to(w.dtype))
        bias = self.template_conv.bias.expand(text.shape[0])
        return F.conv2d(aligned, kernel.to(aligned.dtype), bias.to(aligned.dtype), padding=1)

    def coarse_logits_reference_order(self, feats: Tensor, text: Tensor) -> Tensor:
        """The reference's order of operations ([B, T, P, H, W] similarities, then the convolution); for tests."""
        sims = torch.einsum("bchw,tpc->btphw", self.feat_proj(feats), text)
        b, t, p, h, w = sims.shape
        return self.template_conv(sims.reshape(b * t, p, h, w)).view(b, t, h, w)

    def anchors(self, feats: Tensor, coarse: Tensor) -> Tensor:
        """Query anchors [B, Q, D]: per class, softmax over the pixels of sigmoid(coarse) pools ``feats``;
        ``query_proj``; similarity with the prototypes, softmax over the classes; anchors = mixture of the
        projected class features."""
        weights = coarse.sigmoid().flatten(2).softmax(dim=-1)  # [B, T, N]
        class_feats = weights @ feats.flatten(2).transpose(1, 2).to(weights.dtype)  # [B, T, C]
        class_embeds = self.query_proj(class_feats)  # [B, T, D]
        attn = (class_embeds @ self.prototypes.t().to(class_embeds.dtype)).softmax(dim=1)  # [B, T, Q]
        return attn.transpose(1, 2) @ class_embeds

    def forward(self, feats: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        coarse = self.coarse_logits(feats, text)
        return coarse, self.anchors(feats, coarse)


class TextClassifier(nn.Linear):
    """Classification through text: ``Linear(D -> E)`` (the reference's ``cls_embed``) dotted with the class
    text embeddings (normalised mean over the head templates of the normalised per-template embeddings), no
    temperature: [B, Q, D] -> [B, Q, K]. Buffer ``text_features`` [K, P, E] (per template; the prior reads it
    too). A drop-in ``Mask2FormerHead.class_predictor``."""

    def __init__(self, hidden_dim: int, text_dim: int, num_templates: int, num_texts: int):
        super().__init__(hidden_dim, text_dim)
        self.register_buffer("text_features", torch.zeros(num_texts, num_templates, text_dim))

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def set_text_features(self, text: Tensor) -> None:
        """Replace the per-template class embeddings [K, P, E] (any K)."""
        if text.dim() != 3 or text.shape[1:] != self.text_features.shape[1:]:
            raise ValueError(f"text features must be [K, {self.text_features.shape[1]}, {self.out_features}], "
                             f"got {tuple(text.shape)}")
        _replace_buffer(self, "text_features", text)

    def class_embeddings(self) -> Tensor:
        """[K, E]: normalise per template, mean over templates, normalise."""
        return F.normalize(F.normalize(self.text_features, dim=-1).mean(dim=1), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) @ self.class_embeddings().to(x.dtype).t()


def coarse_prior_loss(prior: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """CMPE's prior loss (unweighted): labels [B, H, W] nearest-downsampled to the prior's [h, w], pixels with
    ``ignore_index`` left out, BCE-with-logits of prior [B, T, h, w] against the one-hot labels, mean over the
    kept pixels x T classes. 0 (with a graph) when every pixel is ignored (the reference would give NaN)."""
    num = prior.shape[1]
    target = F.interpolate(labels[:, None].float(), size=prior.shape[-2:], mode="nearest")[:, 0].long()
    logits = prior.permute(0, 2, 3, 1).reshape(-1, num)
    flat = target.reshape(-1)
    valid = flat != ignore_index
    if not bool(valid.any()):
        return prior.sum() * 0.0
    onehot = F.one_hot(flat[valid], num).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits[valid].float(), onehot.float())


# ------------------------------------------------------------------------------------------ checkpoints
VIREO_HEAD_KEYS: tuple[tuple[str, str | None], ...] = (
    ("decode_head.DQCM.attention_gate.channel_attention.", "decode_head.dqcm.gate.channel."),
    ("decode_head.DQCM.attention_gate.spatial_attention.", "decode_head.dqcm.gate.spatial."),
    ("decode_head.DQCM.linear_fuse.", "decode_head.dqcm.fuse."),
    ("decode_head.prior.feat_proj.", "decode_head.prior.feat_proj."),
    ("decode_head.prior.coarse_embed.", "decode_head.prior.template_conv."),
    ("decode_head.prior.query_proj.", "decode_head.prior.query_proj."),
    ("decode_head.prior.query_proto", "decode_head.prior.prototypes"),
    ("decode_head.feat_conv.", None),  # defined by the reference head, never used by its forward
    ("decode_head.out_conv.", None),
)
"""Reference head extras (prefix) -> this implementation's names (prefix), None = ignored. The rest of a
checkpoint is Rein's layout (``backbone.vireo.`` standing for ``backbone.reins.``)."""

_TEXT_BUFFERS = ("reins.text_features", "decode_head.class_predictor.text_features")


def _vireo_head_key(key: str) -> tuple[bool, str | None]:
    """(matched, new key or None for ignored) of one reference head-extra key."""
    for src, dst in VIREO_HEAD_KEYS:
        if key == src or (src.endswith(".") and key.startswith(src)):
            return True, None if dst is None else dst + key[len(src):]
    return False, None


def _is_vireo_mmseg_checkpoint(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith(("backbone.vireo.", "decode_head.DQCM.", "decode_head.prior.query_proto",
                             "decode_head.transformer_decoder.", "decode_head.pixel_decoder.encoder."))
               for k in state)


# ------------------------------------------------------------------------------------------ the method
@dataclass
class VireoConfig(ReinConfig):
    """Vireo = Rein + frozen DA-V2 encoder tokens + CLIP class text (tokens and head) + DQCM + CMPE."""

    depth_vit: ViTConfig | None = None  # the frozen Depth-Anything-V2 encoder (taps = every block)
    text: str = "ViT-L-14-336"  # frozen CLIP text tower (methods.backbones.text.TEXT_CONFIGS)
    class_names: tuple[str, ...] = VIREO_CLASS_NAMES
    background_name: str = BACKGROUND_NAME
    backbone_templates: tuple[str, ...] = VIREO_SELECT_TEMPLATES  # averaged for the GeoText tokens
    head_templates: tuple[str, ...] = IMAGENET_TEMPLATES  # kept per template for CMPE; averaged for classes
    gate_init: float = 0.5  # w_i at init (the gate is sigmoid(w_i) = 0.6225)
    prior_loss_weight: float = 0.1
    gate_reduction: int = 16  # DQCM channel-gate reduction
    # class loss averaged over batch x queries: the reference head calls mmdet's CrossEntropyLoss without
    # avg_factor (vireo/models/heads/vireo_mask2former.py:355), where Rein's divides by the class-weight sum
    class_loss_norm: str = "queries"
    text_weights_file: str | None = None  # text tower file when its config names none (miniature: CLIP_RN_tiny.pt)
    text_init_seed: int = 0  # seed of the text tower's random initialisation when no CLIP file is loaded

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.depth_vit, dict):
            self.depth_vit = ViTConfig(**self.depth_vit)
        for name in ("class_names", "backbone_templates", "head_templates"):
            setattr(self, name, tuple(getattr(self, name)))


@register_method
class Vireo(Rein):
    """Vireo (NeurIPS 2025): frozen DINOv2-L + frozen DA-V2 encoder + CLIP text, GeoText tokens, DQCM, CMPE and a
    text classifier on Rein's token-linked Mask2Former."""

    name = "vireo"
    paper = "Vireo: Leveraging Depth and Language for Open-Vocabulary Domain-Generalized Semantic Segmentation " \
            "(NeurIPS 2025)"
    config_class = VireoConfig
    backbones = ("dinov2_vitl14",)

    config: VireoConfig

    def __init__(self, config: VireoConfig):
        super().__init__(config)  # Rein: frozen DINOv2, neck, tokens, token-linked head (+ querys2feat)
        vit, dvit, head = config.vit, config.depth_vit, config.head
        if dvit is None:
            raise ValueError("VireoConfig.depth_vit is None: Vireo needs the Depth-Anything-V2 encoder config "
                             "(vit_config('depth_anything_v2_vitl'))")
        if (dvit.embed_dim, dvit.depth) != (vit.embed_dim, vit.depth) or dvit.taps != tuple(range(dvit.depth)):
            raise ValueError(f"the DA-V2 encoder must match the DINOv2 width/depth ({vit.embed_dim}, {vit.depth}) "
                             f"and tap every block; got ({dvit.embed_dim}, {dvit.depth}) taps {dvit.taps}")
        if len(config.class_names) != head.num_classes:
            raise ValueError(f"{len(config.class_names)} class names for a {head.num_classes}-class head")
        tcfg = text_config(config.text)
        num_texts = len(config.class_names) + 1
        self.depth_backbone = ViTBackbone(dvit)
        self.reins = GeoTextTokens(
            vit.depth, vit.embed_dim, token_length=config.token_length, lora_dim=config.lora_dim,
            patch_size=vit.patch_size, scale_init=config.scale_init, use_softmax=config.use_softmax,
            link_to_query=config.link_to_query, query_dim=head.hidden_dim, text_dim=tcfg.embed_dim,
            num_texts=num_texts, gate_init=config.gate_init)
        channels = head.in_channels[0]
        self.decode_head.dqcm = DynamicQueryCorrection(channels, len(head.in_channels), config.gate_reduction)
        self.decode_head.prior = CoarseMaskPrior(channels, tcfg.embed_dim, len(config.head_templates),
                                                 head.hidden_dim, head.num_queries)
        self.decode_head.class_predictor = TextClassifier(head.hidden_dim, tcfg.embed_dim,
                                                          len(config.head_templates), num_texts)
        if config.class_loss_norm not in CLASS_LOSS_NORMS:
            raise ValueError(f"VireoConfig.class_loss_norm={config.class_loss_norm!r}: expected {CLASS_LOSS_NORMS}")
        self.decode_head.criterion.class_loss_norm = config.class_loss_norm
        self.class_names: tuple[str, ...] = tuple(config.class_names)
        self._clip_path: str | None = None
        self._text_ready = False
        object.__setattr__(self, "_text_tower", None)  # not a submodule: no parameters, no checkpoint keys
        if config.scale == "miniature" and not self.reins.text_features.is_meta:
            self.ensure_text_embeddings()  # a tiny tower: cheap, and deterministic (text_init_seed)

    # ---------------------------------------------------------------------------------- construction
    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper", **fields: Any) -> VireoConfig:
        backbone = backbone or cls.backbones[0]
        if backbone not in cls.backbones:
            raise KeyError(f"Vireo backbones are {cls.backbones}, not {backbone!r}")
        rein = Rein.default_config(backbone, scale=scale)
        base = {f.name: getattr(rein, f.name) for f in dataclasses.fields(ReinConfig)}
        base["head"] = dataclasses.replace(rein.head, mask_loss_on_points=False)
        if scale == "miniature":
            depth = vit_config("dinov2_tiny", frozen=True, init_values=1.0, taps=tuple(range(4)),
                               weights_file="depth_anything_v2_tiny.pth")
            text = "tiny"
            fields = {"text_weights_file": "CLIP_RN_tiny.pt", **fields}
        else:
            depth, text = vit_config("depth_anything_v2_vitl", frozen=True), "ViT-L-14-336"
        return VireoConfig(**{**base, "depth_vit": depth, "text": text, **fields})

    @classmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return vireo_recipe(scale, source)

    # ---------------------------------------------------------------------------------- text
    def text_encoder(self) -> CLIPTextEncoder:
        """The frozen CLIP text tower (kept outside the module tree): from the official file once
        :meth:`load_text_official` ran, else a random initialisation seeded with ``text_init_seed``."""
        if self._text_tower is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.text_init_seed)
                encoder = CLIPTextEncoder(text_config(self.config.text), frozen=True)
            object.__setattr__(self, "_text_tower", encoder)
        return self._text_tower

    @torch.no_grad()
    def embed_class_names(self, names: Sequence[str], device: torch.device | str | None = None
                          ) -> tuple[Tensor, Tensor]:
        """(backbone text [K, E] = normalised mean over the select templates, head text [K, P, E] per template)
        for ``names`` (the background entry included by the caller). The tower runs on ``device`` (default:
        the buffers' device) and goes back to the CPU afterwards; the results are on the buffers' device."""
        encoder = self.text_encoder()
        home = self.reins.text_features.device
        device = torch.device(device) if device is not None else home
        encoder.to(device)
        try:
            with torch.autocast(device.type, enabled=False):
                select = class_template_embeddings(encoder, names, self.config.backbone_templates)
                per_template = class_template_embeddings(encoder, names, self.config.head_templates)
        finally:
            encoder.to("cpu")
        return F.normalize(select.mean(dim=1), dim=-1).to(home), per_template.to(home)

    def _install_text(self, names: Sequence[str], device: torch.device | str | None = None) -> None:
        backbone_text, head_text = self.embed_class_names(names, device)
        self.reins.set_text_features(backbone_text)
        self.decode_head.class_predictor.set_text_features(head_text)
        self._text_ready = True

    def ensure_text_embeddings(self, device: torch.device | str | None = None) -> None:
        """Embed the class names (+ background) once, if no embeddings are installed yet."""
        if not self._text_ready:
            self._install_text([*self.class_names, self.config.background_name], device)

    def text_source(self) -> str:
        """Where the class text embeddings come from (for the result record)."""
        if self._clip_path:
            return self._clip_path
        return f"{self.config.text} text tower, random init (seed {self.config.text_init_seed})"

    def prepare(self, train_dataset: Any, cache_dir: Path | None, log: Any = print, *, seed: int = 0,
                device: torch.device | None = None) -> dict[str, Any] | None:
        """Embed the class texts before training (on ``device``; the runner calls this once, before any DDP
        wrapping), and report where they come from."""
        fresh = not self._text_ready
        self.ensure_text_embeddings(device)
        if fresh:
            log(f"Vireo: class text embeddings from {self.text_source()} ({len(self.class_names)} classes + "
                f"background; {len(self.config.backbone_templates)} / {len(self.config.head_templates)} templates)")
        return {"text_embeddings": self.text_source(), "num_texts": len(self.class_names) + 1,
                "templates": [len(self.config.backbone_templates), len(self.config.head_templates)]}

    def set_class_names(self, names: Sequence[str], *, background: str | None = None) -> None:
        """Open-vocabulary use: re-embed ``names`` (+ the background entry) with the frozen text tower, for the
        GeoText tokens and the head. ``predict`` then returns ``len(names)`` channels. Training needs the
        head's ``num_classes`` names (the harness trains and scores the 19 Cityscapes classes)."""
        names = tuple(names)
        if not names:
            raise ValueError("set_class_names needs at least one class name")
        self._install_text([*names, background or self.config.background_name])
        self.class_names = names

    # ---------------------------------------------------------------------------------- forward
    def depth_tokens(self, x: Tensor) -> list[Tensor]:
        """The frozen DA-V2 encoder's patch tokens after every block, [B, N, C] each (no gradient)."""
        with torch.no_grad():
            out = self.depth_backbone(x)
        return [f.flatten(2).transpose(1, 2) for f in out.features]

    def extract_features(self, images: Tensor) -> list[Tensor]:
        x = self.normalize(images)
        hook = self.reins.after_block_with(self.depth_tokens(x), self.backbone.num_prefix_tokens)
        out = self.backbone(x, after_block=hook)
        return list(self.neck(out.features))

    def forward_head(self, images: Tensor) -> dict[str, Any]:
        """Backbones -> DQCM (residual on the stride-4 map) -> CMPE prior and anchors -> Mask2Former with
        query_pos = Q + anchors and query content = querys2feat(Q + anchors). Adds ``mask_prior``."""
        self.ensure_text_embeddings()
        feats = self.extract_features(images)
        head = self.decode_head
        feats[0] = feats[0] + head.dqcm(feats)
        text = head.class_predictor.text_features[:-1]  # the classes, without the background entry
        prior, anchors = head.prior(feats[0], text)
        query_pos = self.reins.queries()[None] + anchors
        out = head(feats, query_content=head.querys2feat(query_pos), query_pos=query_pos)
        out["mask_prior"] = prior
        return out

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        if len(self.class_names) != self.config.head.num_classes:
            raise RuntimeError(f"Vireo trains on its {self.config.head.num_classes} classes; set_class_names "
                               f"changed them to {len(self.class_names)}: call set_class_names(config.class_names)")
        outputs = self.forward_head(images)
        losses = self.decode_head.losses(outputs, labels)
        losses["loss_prior"] = self.config.prior_loss_weight * coarse_prior_loss(outputs["mask_prior"], labels)
        return losses

    # ---------------------------------------------------------------------------------- weights
    @staticmethod
    def _files_by_tower(config: VireoConfig) -> dict[str, str | None]:
        """The official file of each tower (at scale="miniature": the stand-ins, methods.miniature_weights)."""
        return {"vit": config.vit.weights_file, "depth": config.depth_vit.weights_file,
                "text": config.text_weights_file or text_config(config.text).weights_file}

    @classmethod
    def pretrained_files(cls, config: VireoConfig) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for f in cls._files_by_tower(config).values() if f))

    def pretrained_loaders(self) -> dict[str, Any]:
        loaders = {"vit": self._load_official, "depth": self.depth_backbone.load_official,
                   "text": self.load_text_official}
        return {file: loaders[tower] for tower, file in self._files_by_tower(self.config).items() if file}

    def load_text_official(self, path: str | Path) -> KeyReport:
        """Load the CLIP text tower from ``ViT-L-14-336px.pt`` (vision keys ignored); the class embeddings are
        (re)computed from it on first use, on the model's device."""
        with torch.device("meta"):
            encoder = CLIPTextEncoder(text_config(self.config.text), frozen=True)
        report = encoder.load_official(path)
        if report.missing:
            raise ValueError(f"{path}: the text tower is incomplete: {report.summary()}")
        object.__setattr__(self, "_text_tower", encoder)
        self._clip_path = str(path)
        self._text_ready = False
        report.converted = list(report.converted) + ["class text embeddings: computed from this tower on first use"]
        return report

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official mmseg checkpoints -> our keys (module docstring); our own checkpoints pass unchanged."""
        if not _is_vireo_mmseg_checkpoint(state):
            self._conversion_notes, self._ignored_keys = [], []
            return state
        rest: dict[str, Tensor] = {}
        extras: dict[str, Tensor] = {}
        depth: dict[str, Tensor] = {}
        ignored: list[str] = []
        for key, value in state.items():
            if key.startswith("backbone.vireo."):
                rest["backbone.reins." + key[len("backbone.vireo."):]] = value
            elif key.startswith("backbone.depth_anything."):
                depth[key[len("backbone.depth_anything."):]] = value
            else:
                matched, new = _vireo_head_key(key)
                if not matched:
                    rest[key] = value
                elif new is None:
                    ignored.append(key)
                else:
                    extras[new] = value
        out = super().convert_checkpoint(rest)  # Rein: tokens, link, mmdet head, querys2feat, DINOv2 keys
        notes = self._conversion_notes
        notes[:1] = [n.replace("mmseg Rein checkpoint", "mmseg Vireo checkpoint (backbone.vireo.* read as Rein's)")
                     for n in notes[:1]]
        if extras:
            notes.append("Vireo head extras: " + ", ".join(f"{s}->{d}" for s, d in VIREO_HEAD_KEYS if d))
        if depth:
            from methods.backbones.checkpoints import convert_for_backbone

            converted, report = convert_for_backbone(depth, self.depth_backbone)
            out.update({"depth_backbone." + k: v for k, v in converted.items()})
            out.update({"backbone.depth_anything." + k: depth[k] for k in report.unexpected if k in depth})
            ignored += ["backbone.depth_anything." + k for k in report.ignored]
            notes.append(f"backbone.depth_anything.* ({report.layout}) -> depth_backbone: "
                         + "; ".join(report.converted))
        out.update(extras)
        self._ignored_keys = ignored
        return out

    def load_checkpoint(self, state, *, strict: bool = False) -> KeyReport:
        """As Rein's; the text buffers may be absent (official checkpoints): then they come from the CLIP
        tower. When present they are installed as they are."""
        report = super().load_checkpoint(state, strict=False)
        absent = [k for k in _TEXT_BUFFERS if k in report.missing]
        if absent:
            report.missing = [k for k in report.missing if k not in _TEXT_BUFFERS]
            report.converted.append("text embeddings not in the checkpoint: computed from the CLIP text tower")
        else:
            self._text_ready = True  # the checkpoint's own text (same shapes, so the same number of classes)
        report.ignored = list(report.ignored) + list(getattr(self, "_ignored_keys", []))
        if strict and not report.ok():
            raise ValueError(f"checkpoint does not match {self.name}: {report.summary()}")
        return report
