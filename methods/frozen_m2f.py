"""Frozen vision foundation model + Mask2Former: the "Frozen backbone+M2F" baseline rows of Rein's Fig. 1.

The backbone is frozen and kept in eval mode; only the Mask2Former head trains. Recipe and evaluation are
Rein's (methods.md §2.2/§2.3), which is how the baseline numbers in reported.csv were produced.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import TrainRecipe
from methods.registry import register_method
from methods.rein import REIN_SHORT_EDGES, rein_recipe  # noqa: F401  (Rein owns its recipe)
from methods.vit_m2f import ViTMask2Former, ViTMask2FormerConfig, build_vit_m2f_config


@dataclass
class FrozenM2FConfig(ViTMask2FormerConfig):
    pass


@register_method
class FrozenMask2Former(ViTMask2Former):
    """Frozen VFM (DINOv2-L, EVA02-L or CLIP-B) + trainable Mask2Former head."""

    name = "frozen_m2f"
    paper = "Rein (CVPR 2024) Fig. 1 baseline: frozen backbone + Mask2Former"
    config_class = FrozenM2FConfig
    backbones = ("dinov2_vitl14", "eva02_clip_vitl14", "clip_vitb16")

    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper") -> FrozenM2FConfig:
        return build_vit_m2f_config(FrozenM2FConfig, backbone or cls.backbones[0], scale, frozen=True)

    @classmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return rein_recipe(scale)
