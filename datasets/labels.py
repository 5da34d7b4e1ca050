"""Label tables of the DGSS datasets (shared/specs/datasets.md §2, §4, §5).

Everything is evaluated in the 19 Cityscapes *train ids* (0-18, 255 = ignore). Each dataset's
on-disk encoding is converted with a 256-entry lookup table (LUT) built here from the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
NUM_CLASSES = len(CITYSCAPES_CLASSES)


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of cityscapesscripts' label table."""

    name: str
    id: int
    train_id: int
    category: str
    ignore_in_eval: bool
    color: tuple[int, int, int]


CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", True, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", True, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", True, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", True, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", True, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", True, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", True, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", True, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", True, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", False, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", False, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", False, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", False, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", False, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", False, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", False, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", False, (119, 11, 32)),
)


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[raw]`` for a uint8 label raster and a 256-entry uint8 table, at memory speed (``cv2.LUT``, about 5x
    faster than numpy's fancy indexing on a 12-megapixel Mapillary label)."""
    if raw.dtype != np.uint8 or lut.dtype != np.uint8 or lut.shape != (256,) or raw.ndim != 2:
        return lut[raw]
    return cv2.LUT(np.ascontiguousarray(raw), lut)


LABEL_ID_TO_TRAIN_ID: np.ndarray = _lut({l.id: l.train_id for l in CITYSCAPES_LABELS if l.train_id != 255})
"""Cityscapes labelId -> trainId (also GTA5 palette indices and ACDC ``_gt_labelIds.png``)."""

TRAIN_ID_TO_LABEL_ID: np.ndarray = np.zeros(256, dtype=np.uint8)
for _l in CITYSCAPES_LABELS:
    if _l.train_id != 255:
        TRAIN_ID_TO_LABEL_ID[_l.train_id] = _l.id

CITYSCAPES_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
"""Colour of each Cityscapes *labelId* (the GTA5 label palette)."""
for _l in CITYSCAPES_LABELS:
    CITYSCAPES_PALETTE[_l.id] = _l.color

TRAIN_ID_PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
"""Colour of each train id (255 stays black), for visualisation."""
for _l in CITYSCAPES_LABELS:
    if _l.train_id != 255:
        TRAIN_ID_PALETTE[_l.train_id] = _l.color

# ----------------------------------------------------------------------------------------------
# SYNTHIA-RAND-CITYSCAPES: class id in the R channel of a 16-bit 3-channel PNG.
SYNTHIA_CLASSES: tuple[str, ...] = (
    "void", "sky", "building", "road", "sidewalk", "fence", "vegetation", "pole", "car",
    "traffic sign", "pedestrian", "bicycle", "motorcycle", "parking-slot", "road-work",
    "traffic light", "terrain", "rider", "truck", "bus", "train", "wall", "lanemarking",
)
SYNTHIA_TO_TRAIN_ID: np.ndarray = _lut({
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17,
    15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
})
SYNTHIA_MISSING_TRAIN_IDS: tuple[int, ...] = (9, 14, 16)
"""terrain, truck, train: absent from SYNTHIA labels; dropped for the 16-class convention."""

# ----------------------------------------------------------------------------------------------
# Mapillary Vistas v1.2: 66 palette ids -> 19 train ids, two mappings in use (datasets.md §5.2).
MAPILLARY_V12_NAMES: tuple[str, ...] = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane",
    "Crosswalk - Plain", "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road",
    "Service Lane", "Sidewalk", "Bridge", "Building", "Tunnel", "Person", "Bicyclist",
    "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk", "Lane Marking - General",
    "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box",
    "Mailbox", "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame",
    "Utility Pole", "Traffic Light", "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can",
    "Bicycle", "Boat", "Bus", "Car", "Caravan", "Motorcycle", "On Rails", "Other Vehicle",
    "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle", "Unlabeled",
)

MAPILLARY_ROBUSTNET_IDS: dict[int, int] = {
    13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
    29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,
}
"""The explicit id list of RobustNet / HRDA / the VLTSeg re-implementation."""


def mapillary_name_matched_train_id(readable_name: str) -> int:
    """The Rein/DDB/openseg name-matching rule (datasets.md §5.2), applied to one v1.2 name."""
    key = readable_name.lower().replace(" ", "").replace("-", "")
    compact = [c.replace(" ", "") for c in CITYSCAPES_CLASSES]
    if key in compact:
        return compact.index(key)
    rules: tuple[tuple[tuple[str, ...], str], ...] = (
        (("trafficsign", "front", "back"), "traffic sign"),
        (("onrail",), "train"),
        (("cyclist", "rider"), "rider"),
        (("pole", "streetlight"), "pole"),
        (("curb", "pedestrianarea"), "sidewalk"),
        (("crosswalkplain", "parking", "bikelane", "servicelane", "lanemarking"), "road"),
    )
    for needles, cls in rules:
        if any(n in key for n in needles):
            return CITYSCAPES_CLASSES.index(cls)
    return IGNORE_INDEX


MAPILLARY_MAPPINGS: dict[str, np.ndarray] = {
    "robustnet": _lut(MAPILLARY_ROBUSTNET_IDS),
    "rein": _lut({i: t for i, n in enumerate(MAPILLARY_V12_NAMES)
                  if (t := mapillary_name_matched_train_id(n)) != IGNORE_INDEX}),
}
DEFAULT_MAPILLARY_MAPPING = "robustnet"  # decisions.md §4


def mapillary_lut(mapping: str) -> np.ndarray:
    try:
        return MAPILLARY_MAPPINGS[mapping]
    except KeyError:
        raise ValueError(f"unknown Mapillary mapping {mapping!r}; choose one of {sorted(MAPILLARY_MAPPINGS)}") from None
