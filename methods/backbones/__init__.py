"""Shared image backbones."""

from .checkpoints import (
    CheckpointShapeError,
    KeyReport,
    detect_layout,
    load_official,
    read_state_dict,
    synthetic_official_state_dict,
    weights_path,
    write_synthetic_checkpoint,
)
from .vit import (
    VIT_CONFIGS,
    MultiScaleResample,
    SimpleFPN,
    ViTBackbone,
    ViTConfig,
    ViTOutput,
    count_params,
    vit_config,
)

__all__ = [
    "VIT_CONFIGS",
    "CheckpointShapeError",
    "KeyReport",
    "MultiScaleResample",
    "SimpleFPN",
    "ViTBackbone",
    "ViTConfig",
    "ViTOutput",
    "count_params",
    "detect_layout",
    "load_official",
    "read_state_dict",
    "synthetic_official_state_dict",
    "vit_config",
    "weights_path",
    "write_synthetic_checkpoint",
]
