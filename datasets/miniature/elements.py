"""Scene elements of the miniature generator (``E``), their encodings in each official label format, and
their canonical colours and texture amplitudes."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from ..labels import LABEL_ID_TO_TRAIN_ID


# Scene elements and their label encodings
class E(IntEnum):
    """Scene elements drawn by the generator (finer than the 19 classes: includes void stuff and
    the Mapillary-only distinctions such as bike lane, crosswalk, manhole, street light)."""

    VOID = 0
    EGO = 1
    ROAD = 2
    SIDEWALK = 3
    PARKING = 4
    RAIL_TRACK = 5
    BUILDING = 6
    WALL = 7
    FENCE = 8
    POLE = 9
    TRAFFIC_LIGHT = 10
    TRAFFIC_SIGN = 11
    VEGETATION = 12
    TERRAIN = 13
    SKY = 14
    PERSON = 15
    RIDER = 16
    CAR = 17
    TRUCK = 18
    BUS = 19
    TRAIN = 20
    MOTORCYCLE = 21
    BICYCLE = 22
    LANE_MARKING = 23
    CROSSWALK = 24
    BIKE_LANE = 25
    MANHOLE = 26
    CURB = 27
    STREET_LIGHT = 28
    SIGN_BACK = 29
    STATIC = 30


# element: (Cityscapes labelId, Mapillary v1.2 id, SYNTHIA id)
_ENCODING: dict[E, tuple[int, int, int]] = {
    E.VOID: (0, 65, 0), E.EGO: (1, 64, 0), E.ROAD: (7, 13, 3), E.SIDEWALK: (8, 15, 4),
    E.PARKING: (9, 10, 13), E.RAIL_TRACK: (10, 12, 0), E.BUILDING: (11, 17, 2), E.WALL: (12, 6, 21),
    E.FENCE: (13, 3, 5), E.POLE: (17, 45, 7), E.TRAFFIC_LIGHT: (19, 48, 15), E.TRAFFIC_SIGN: (20, 50, 9),
    E.VEGETATION: (21, 30, 6), E.TERRAIN: (22, 29, 16), E.SKY: (23, 27, 1), E.PERSON: (24, 19, 10),
    E.RIDER: (25, 20, 17), E.CAR: (26, 55, 8), E.TRUCK: (27, 61, 18), E.BUS: (28, 54, 19),
    E.TRAIN: (31, 58, 20), E.MOTORCYCLE: (32, 57, 12), E.BICYCLE: (33, 52, 11),
    E.LANE_MARKING: (7, 24, 22), E.CROSSWALK: (7, 23, 22), E.BIKE_LANE: (7, 7, 3), E.MANHOLE: (7, 41, 3),
    E.CURB: (8, 2, 4), E.STREET_LIGHT: (17, 44, 7), E.SIGN_BACK: (4, 49, 0), E.STATIC: (4, 51, 0),
}


def _element_lut(col: int) -> np.ndarray:
    lut = np.full(256, 0, dtype=np.uint8)
    for e, enc in _ENCODING.items():
        lut[int(e)] = enc[col]
    lut.setflags(write=False)
    return lut


ELEMENT_CITYSCAPES_ID: np.ndarray = _element_lut(0)
"""Element -> Cityscapes labelId (GTA5, Cityscapes, ACDC labelIds)."""
ELEMENT_MAPILLARY_ID: np.ndarray = _element_lut(1)
"""Element -> Mapillary v1.2 id (0-65)."""
ELEMENT_SYNTHIA_ID: np.ndarray = _element_lut(2)
"""Element -> SYNTHIA class id (0-22)."""
ELEMENT_TRAIN_ID: np.ndarray = LABEL_ID_TO_TRAIN_ID[ELEMENT_CITYSCAPES_ID]
"""Element -> train id under the Cityscapes convention (BDD masks, ACDC labelTrainIds)."""
ELEMENT_TRAIN_ID.setflags(write=False)

_N_ELEMENTS = len(E)

# canonical (realistic) base colours, RGB
_BASE_RGB = np.zeros((_N_ELEMENTS, 3), np.float32)
for _e, _c in {
    E.VOID: (95, 85, 75), E.EGO: (28, 28, 32), E.ROAD: (100, 100, 106), E.SIDEWALK: (168, 160, 150),
    E.PARKING: (122, 118, 128), E.RAIL_TRACK: (112, 96, 80), E.BUILDING: (160, 125, 100), E.WALL: (186, 180, 168),
    E.FENCE: (125, 115, 95), E.POLE: (118, 118, 124), E.TRAFFIC_LIGHT: (38, 38, 36), E.TRAFFIC_SIGN: (200, 35, 35),
    E.VEGETATION: (68, 118, 44), E.TERRAIN: (142, 160, 82), E.SKY: (135, 180, 235), E.PERSON: (150, 60, 60),
    E.RIDER: (60, 80, 160), E.CAR: (40, 60, 150), E.TRUCK: (215, 215, 210), E.BUS: (225, 185, 40),
    E.TRAIN: (200, 205, 212), E.MOTORCYCLE: (42, 42, 46), E.BICYCLE: (52, 52, 58), E.LANE_MARKING: (236, 236, 230),
    E.CROSSWALK: (236, 236, 230), E.BIKE_LANE: (178, 82, 66), E.MANHOLE: (58, 58, 60), E.CURB: (192, 190, 184),
    E.STREET_LIGHT: (232, 232, 205), E.SIGN_BACK: (160, 160, 166), E.STATIC: (62, 78, 62),
}.items():
    _BASE_RGB[int(_e)] = _c
_BASE_RGB.setflags(write=False)

# texture amplitudes (fine noise, low-frequency noise), grey levels
_TEXTURE = np.full((_N_ELEMENTS, 2), (3.0, 3.0), np.float32)
for _e, _t in {
    E.ROAD: (7, 8), E.SIDEWALK: (6, 6), E.PARKING: (6, 6), E.RAIL_TRACK: (12, 6), E.BUILDING: (4, 9),
    E.WALL: (5, 6), E.VEGETATION: (16, 20), E.TERRAIN: (11, 14), E.SKY: (1, 5), E.FENCE: (4, 3),
}.items():
    _TEXTURE[int(_e)] = _t
_TEXTURE.setflags(write=False)

_CAR_COLOURS = np.array([(230, 230, 228), (30, 30, 34), (160, 162, 168), (175, 30, 30), (35, 60, 140),
                         (30, 80, 50), (215, 185, 40), (120, 120, 125), (90, 40, 30)], np.float32)
_CLOTHES = np.array([(200, 40, 50), (40, 60, 150), (230, 230, 225), (30, 30, 30), (60, 120, 60),
                     (220, 170, 40), (120, 70, 150), (90, 90, 95), (150, 100, 60)], np.float32)
_SKIN = np.array([(240, 200, 170), (205, 160, 120), (150, 100, 70), (95, 65, 45)], np.float32)
_BUILDING_COLOURS = np.array([(165, 115, 90), (205, 192, 170), (140, 140, 146), (182, 150, 118),
                              (120, 108, 98), (190, 175, 150), (150, 160, 175)], np.float32)
_BUS_COLOURS = np.array([(225, 185, 40), (200, 40, 40), (232, 232, 232), (40, 110, 190), (60, 140, 80)], np.float32)
_TRUCK_COLOURS = np.array([(222, 222, 216), (200, 70, 40), (60, 90, 150), (110, 110, 112)], np.float32)
