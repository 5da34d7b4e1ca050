"""Segmentation heads shared by the methods (the Mask2Former head of shared/specs/methods.md §0)."""

from .criterion import Mask2FormerCriterion, dice_loss, semantic_targets, sigmoid_bce_loss, uncertain_point_coords
from .mask2former import Mask2FormerConfig, Mask2FormerHead, MaskedAttentionDecoderLayer, semantic_inference
from .matcher import FixedMatcher, HungarianMatcher, point_sample
from .pixel_decoder import (
    MSDeformAttnPixelDecoder,
    MultiheadAttention,
    MultiScaleDeformableAttention,
    ms_deform_attn_sample,
    sine_positional_encoding,
)

__all__ = [
    "FixedMatcher",
    "HungarianMatcher",
    "MSDeformAttnPixelDecoder",
    "Mask2FormerConfig",
    "Mask2FormerCriterion",
    "Mask2FormerHead",
    "MaskedAttentionDecoderLayer",
    "MultiScaleDeformableAttention",
    "MultiheadAttention",
    "dice_loss",
    "ms_deform_attn_sample",
    "point_sample",
    "semantic_inference",
    "semantic_targets",
    "sigmoid_bce_loss",
    "sine_positional_encoding",
    "uncertain_point_coords",
]
