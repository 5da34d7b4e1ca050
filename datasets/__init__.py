"""DGSS datasets: official-layout loaders, label tables, transforms and the miniature benchmark.

Typical use::

    from datasets import build_dataset, TrainTransform, TrainAugmentation, ensure_miniature
    root = ensure_miniature()                       # or a real data root
    ds = build_dataset("gta5", "all", root, transform=TrainTransform(TrainAugmentation()))
    sample = ds[(index, aug_seed)]                  # deterministic augmentation
"""

from .base import (
    ConcatSegmentationDataset,
    DatasetLayoutError,
    MissingLabelsError,
    SamplePair,
    SegmentationDataset,
    read_image,
    read_index_png,
)
from .fingerprint import dataset_fingerprints, fingerprint_pairs, split_fingerprint
from .labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DEFAULT_MAPILLARY_MAPPING,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    MAPILLARY_MAPPINGS,
    NUM_CLASSES,
    SYNTHIA_TO_TRAIN_ID,
    TRAIN_ID_PALETTE,
    mapillary_lut,
)
from .loaders import DATASET_DIRS, DATASET_NAMES, build_dataset, dataset_dir, list_pairs
from .miniature import (
    MINIATURE_VERSION,
    MiniatureParams,
    ensure_miniature,
    generate_miniature,
    is_miniature_root,
    miniature_root,
)
from .sampling import RareClassCropDataset, RareClassSampler, RareClassSampling, RareClassStats, class_pixel_counts
from .transforms import HeightCenterCrop, TestTransform, TrainAugmentation, TrainTransform, rescale_size

__all__ = [
    "ConcatSegmentationDataset", "HeightCenterCrop", "MissingLabelsError", "RareClassCropDataset",
    "RareClassSampler", "RareClassSampling", "RareClassStats", "class_pixel_counts", "dataset_fingerprints",
    "fingerprint_pairs", "split_fingerprint",
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "DATASET_DIRS", "DATASET_NAMES", "DEFAULT_MAPILLARY_MAPPING",
    "DatasetLayoutError", "IGNORE_INDEX", "LABEL_ID_TO_TRAIN_ID", "MAPILLARY_MAPPINGS", "MINIATURE_VERSION",
    "MiniatureParams", "NUM_CLASSES", "SYNTHIA_TO_TRAIN_ID", "SamplePair", "SegmentationDataset", "TRAIN_ID_PALETTE",
    "TestTransform", "TrainAugmentation", "TrainTransform", "build_dataset", "dataset_dir", "ensure_miniature",
    "generate_miniature", "is_miniature_root", "list_pairs", "mapillary_lut", "miniature_root", "read_image",
    "read_index_png", "rescale_size",
]
