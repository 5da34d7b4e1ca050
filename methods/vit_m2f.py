"""ViT encoder + multi-scale neck + Mask2Former head: the skeleton Rein, SET, Vireo and VLTSeg share.

Subclasses change what happens between backbone blocks (``after_block``), which queries the head gets
(``head_queries``), and which parts train. The shared pieces are written once: ``ViTBackbone``,
``MultiScaleResample`` and ``Mask2FormerHead``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from methods.backbones.vit import MultiScaleResample, ViTBackbone, ViTConfig, vit_config
from methods.base import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Method, MethodConfig
from methods.heads.mask2former import Mask2FormerConfig, Mask2FormerHead, semantic_inference

MINIATURE_BACKBONES = {
    "dinov2_vitl14": "dinov2_tiny",
    "eva02_clip_vitl14": "eva02_tiny",
    "eva02_clip_vitl14_s4b": "eva02_tiny",
    "clip_vitb16": "clip_tiny",
}
"""Paper backbone -> the CPU-sized configuration of the same family used at ``scale="miniature"``."""

CLIP_FAMILIES = ("eva02", "clip")


def miniature_head(in_channels: tuple[int, ...], num_queries: int = 100, **changes: Any) -> Mask2FormerConfig:
    """A Mask2Former small enough for a CPU: same structure, fewer/narrower layers and points.

    It has no pixel-decoder encoder layers. The real head's 6 add context on top of a 300M-parameter ViT and
    cannot learn real streets from raw patches; on the miniature scenes 2 such layers could, and hid the
    backbone: on a frozen *random* ViT (whose taps are its patch embedding) frozen_m2f scored as well as on the
    pretrained stand-in (seed 0: 15.30 vs 15.66 mean target mIoU), VLTSeg fine-tuning a random EVA02 scored 13.45
    vs 14.96. Without them the head has to read the backbone: 8.30 vs 14.18, and 6.93 vs 11.61. tqdm's
    text-conditioned pixel decoder asks for its 2 (``pixel_decoder_layers=2`` in ``changes``).
    """
    cfg = Mask2FormerConfig(
        in_channels=in_channels, hidden_dim=64, num_queries=min(num_queries, 32), num_heads=4,
        pixel_decoder_layers=0, pixel_decoder_ffn=128, decoder_layers=3, decoder_ffn=128,
        train_num_points=1024,
    )
    return dataclasses.replace(cfg, **changes)


@dataclass
class ViTMask2FormerConfig(MethodConfig):
    vit: ViTConfig | None = None
    head: Mask2FormerConfig = field(default_factory=Mask2FormerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.vit, dict):
            self.vit = ViTConfig(**self.vit)
        if isinstance(self.head, dict):
            self.head = Mask2FormerConfig(**self.head)


def build_vit_m2f_config(config_cls: type[ViTMask2FormerConfig], backbone: str, scale: str,
                         *, frozen: bool, num_queries: int = 100, head_changes: dict | None = None,
                         **fields: Any) -> ViTMask2FormerConfig:
    """Resolve (backbone name, scale) into a full config of ``config_cls``."""
    if scale not in ("paper", "miniature"):
        raise ValueError(f"unknown scale {scale!r}: use 'paper' or 'miniature'")
    vit_name = MINIATURE_BACKBONES.get(backbone, backbone) if scale == "miniature" else backbone
    vit = vit_config(vit_name, frozen=frozen)
    channels = (vit.embed_dim,) * 4
    head_changes = dict(head_changes or {})
    if scale == "miniature":
        head = miniature_head(channels, num_queries, **head_changes)
    else:
        head = dataclasses.replace(Mask2FormerConfig(in_channels=channels, num_queries=num_queries), **head_changes)
    clip_like = vit.family in CLIP_FAMILIES
    return config_cls(
        backbone=backbone, scale=scale, vit=vit, head=head,
        image_mean=CLIP_MEAN if clip_like else IMAGENET_MEAN,
        image_std=CLIP_STD if clip_like else IMAGENET_STD,
        **fields,
    )


class ViTMask2Former(Method):
    """Plain ViT -> 4 taps -> bilinear multi-scale (x4, x2, x1, x0.5) -> Mask2Former."""

    config: ViTMask2FormerConfig

    def __init__(self, config: ViTMask2FormerConfig):
        super().__init__(config)
        self.backbone = ViTBackbone(config.vit)
        self.neck = MultiScaleResample()
        self.decode_head = Mask2FormerHead(config.head)

    # hooks for subclasses -------------------------------------------------------------------
    def after_block(self) -> Callable[[int, Tensor, tuple[int, int]], Tensor] | None:
        """Token refinement between backbone blocks (Rein-style). None: plain backbone."""
        return None

    def head_queries(self) -> dict[str, Tensor]:
        """Per-forward query overrides for the head (``query_content``/``query_pos``)."""
        return {}

    # ----------------------------------------------------------------------------------------
    def extract_features(self, images: Tensor) -> list[Tensor]:
        x = self.normalize(images)
        out = self.backbone(x, after_block=self.after_block())
        return list(self.neck(out.features))

    def forward_head(self, images: Tensor) -> dict[str, Any]:
        feats = self.extract_features(images)
        return self.decode_head(feats, **self.head_queries())

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        outputs = self.forward_head(images)
        return self.decode_head.losses(outputs, labels)

    def predict(self, images: Tensor) -> Tensor:
        """mmseg ``Mask2FormerHead.predict``: mask logits upsampled to the input size, then sigmoid and the
        class einsum."""
        outputs = self.forward_head(images)
        return semantic_inference(outputs["pred_logits"], outputs["pred_masks"], size=images.shape[-2:])

    @classmethod
    def pretrained_files(cls, config: ViTMask2FormerConfig) -> tuple[str, ...]:
        """The backbone's official file (at ``scale="miniature"``: its miniature stand-in, methods.miniature_weights)."""
        file = config.vit.weights_file
        return (file,) if file else ()

    def pretrained_loaders(self) -> dict[str, Any]:
        return {file: self.backbone.load_official for file in self.pretrained_files(self.config)}

    def train(self, mode: bool = True) -> "ViTMask2Former":
        super().train(mode)
        if self.config.vit.frozen:
            self.backbone.eval()  # a frozen backbone stays in eval mode (no drop-path, fixed norms)
        return self

    @torch.no_grad()
    def example_input(self, batch: int = 1) -> Tensor:
        size = self.config.vit.img_size
        return torch.zeros(batch, 3, size, size)
