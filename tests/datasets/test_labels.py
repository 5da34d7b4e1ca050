"""Label tables and LUTs (datasets/labels.py) against shared/specs/datasets.md §2, §4, §5."""

import numpy as np
import pytest

from datasets.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    DEFAULT_MAPILLARY_MAPPING,
    IGNORE_INDEX,
    LABEL_ID_TO_TRAIN_ID,
    MAPILLARY_MAPPINGS,
    MAPILLARY_V12_NAMES,
    NUM_CLASSES,
    SYNTHIA_MISSING_TRAIN_IDS,
    SYNTHIA_TO_TRAIN_ID,
    TRAIN_ID_PALETTE,
    TRAIN_ID_TO_LABEL_ID,
    mapillary_lut,
)


def test_cityscapes_label_id_to_train_id():
    assert NUM_CLASSES == 19 and IGNORE_INDEX == 255
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(256):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == expected.get(label_id, 255), label_id
    assert LABEL_ID_TO_TRAIN_ID.dtype == np.uint8 and LABEL_ID_TO_TRAIN_ID.shape == (256,)
    # round trip through the inverse table
    assert all(LABEL_ID_TO_TRAIN_ID[TRAIN_ID_TO_LABEL_ID[t]] == t for t in range(19))


def test_palettes():
    assert tuple(CITYSCAPES_PALETTE[7]) == (128, 64, 128)  # road labelId
    assert tuple(TRAIN_ID_PALETTE[0]) == (128, 64, 128)
    assert tuple(TRAIN_ID_PALETTE[18]) == (119, 11, 32)  # bicycle
    assert tuple(TRAIN_ID_PALETTE[255]) == (0, 0, 0)
    assert [l.name for l in CITYSCAPES_LABELS if l.train_id != 255] == list(CITYSCAPES_CLASSES)


def test_synthia_mapping():
    assert SYNTHIA_TO_TRAIN_ID[3] == 0 and SYNTHIA_TO_TRAIN_ID[1] == 10 and SYNTHIA_TO_TRAIN_ID[21] == 3
    for void in (0, 13, 14, 22, 23, 200):
        assert SYNTHIA_TO_TRAIN_ID[void] == 255
    assert set(SYNTHIA_MISSING_TRAIN_IDS) == {9, 14, 16}


def test_mapillary_mappings_match_spec_tables():
    assert len(MAPILLARY_V12_NAMES) == 66
    hrda = {13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8, 29: 9, 27: 10,
            19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18}
    rein: dict[int, int] = {}
    for ids, t in (((13, 24, 7, 8, 10, 14, 23), 0), ((2, 9, 11, 15), 1), ((17,), 2), ((6,), 3), ((3,), 4),
                   ((44, 45, 47), 5), ((48,), 6), ((46, 49, 50), 7), ((30,), 8), ((29,), 9), ((27,), 10),
                   ((19,), 11), ((20, 21, 22), 12), ((55,), 13), ((61,), 14), ((54,), 15), ((58,), 16),
                   ((57,), 17), ((52,), 18)):
        rein.update({i: t for i in ids})
    for i in range(256):
        assert mapillary_lut("robustnet")[i] == hrda.get(i, 255), i
        assert mapillary_lut("rein")[i] == rein.get(i, 255), i
    differ = [i for i in range(66) if MAPILLARY_MAPPINGS["robustnet"][i] != MAPILLARY_MAPPINGS["rein"][i]]
    assert differ == [7, 8, 9, 10, 11, 14, 23, 41, 44, 46, 49]
    assert DEFAULT_MAPILLARY_MAPPING == "robustnet"


def test_unknown_mapillary_mapping():
    with pytest.raises(ValueError, match="robustnet"):
        mapillary_lut("nope")


def test_apply_lut_fast_path_only_for_uint8_rasters_and_256_entry_uint8_tables(monkeypatch):
    """``cv2.LUT`` for the common case (2-D uint8 raster, 256-entry uint8 table), ``lut[raw]`` for every other
    (cv2 refuses them or reads them differently); both give ``lut[raw]``."""
    import datasets.labels as labels_mod

    calls = []
    real_lut = labels_mod.cv2.LUT
    monkeypatch.setattr(labels_mod.cv2, "LUT", lambda src, lut: calls.append(src.shape) or real_lut(src, lut))
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, 5)).astype(np.uint8)
    lut = rng.integers(0, 256, 256).astype(np.uint8)
    assert (labels_mod.apply_lut(raw, lut) == lut[raw]).all() and calls == [(4, 5)]
    others = [(raw.astype(np.uint16), lut), (raw.astype(np.int64), lut), (raw, lut.astype(np.int64)),
              (raw, np.concatenate([lut, lut[:44]])), (raw[None], lut)]
    for r, t in others:
        out = labels_mod.apply_lut(r, t)
        assert out.dtype == t.dtype and out.shape == r.shape and (out == t[r]).all()
    assert calls == [(4, 5)]  # none of the others took the fast path
