"""The functions that build the label tables, called directly (the module-level tables are built once at import,
so a test of the tables alone would not see a later change of the rule): Rein's Mapillary name-matching rule
name by name against datasets.md §5.2, and the 256-entry LUT builder."""

import numpy as np
import pytest

from datasets.labels import (
    CITYSCAPES_CLASSES,
    MAPILLARY_ROBUSTNET_IDS,
    MAPILLARY_V12_NAMES,
    _lut,
    mapillary_lut,
    mapillary_name_matched_train_id,
)

# datasets.md §5.2, name-matched (Rein/DDB/openseg): v1.2 id -> train id; every other id is ignored (255)
REIN_BY_ID = {13: 0, 24: 0, 7: 0, 8: 0, 10: 0, 14: 0, 23: 0, 2: 1, 9: 1, 11: 1, 15: 1, 17: 2, 6: 3, 3: 4,
              44: 5, 45: 5, 47: 5, 48: 6, 46: 7, 49: 7, 50: 7, 30: 8, 29: 9, 27: 10, 19: 11, 20: 12, 21: 12,
              22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18}


@pytest.mark.parametrize("index,name", list(enumerate(MAPILLARY_V12_NAMES)))
def test_name_rule_for_every_v12_name(index, name):
    assert mapillary_name_matched_train_id(name) == REIN_BY_ID.get(index, 255), name


@pytest.mark.parametrize("name,expected", [
    ("Road", 0), ("road", 0), ("SIDEWALK", 1),  # exact class names, any case
    ("Traffic Light", 6), ("traffic-light", 6), ("TrafficLight", 6),  # spaces and hyphens dropped
    ("Traffic Sign (Back)", 7), ("Sign Back", 7), ("Sign Front", 7),  # every needle of a rule counts alone
    ("Motorcyclist", 12), ("Other Rider", 12), ("On Rails", 16),
    ("Street Light", 5), ("Utility Pole", 5), ("Curb Cut", 1), ("Pedestrian Area", 1),
    ("Crosswalk - Plain", 0), ("Parking", 0), ("Bike Lane", 0), ("Service Lane", 0), ("Lane Marking - General", 0),
    ("Crosswalk - Zebra", 255), ("Bird", 255), ("", 255),
])
def test_name_rule_cases(name, expected):
    assert mapillary_name_matched_train_id(name) == expected


def test_lut_builder():
    lut = _lut({3: 7, 0: 1, 255: 4})
    expected = np.full(256, 255, dtype=np.uint8)
    expected[[3, 0, 255]] = [7, 1, 4]
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    np.testing.assert_array_equal(lut, expected)
    np.testing.assert_array_equal(_lut({}), np.full(256, 255, dtype=np.uint8))


def test_mapillary_luts_rebuilt_from_the_rules():
    np.testing.assert_array_equal(mapillary_lut("robustnet"), _lut(MAPILLARY_ROBUSTNET_IDS))
    rein = np.full(256, 255, dtype=np.uint8)
    rein[list(REIN_BY_ID)] = list(REIN_BY_ID.values())
    np.testing.assert_array_equal(mapillary_lut("rein"), rein)
    assert len(CITYSCAPES_CLASSES) == 19
    with pytest.raises(ValueError, match=r"unknown Mapillary mapping 'x'; choose one of \['rein', 'robustnet'\]"):
        mapillary_lut("x")
