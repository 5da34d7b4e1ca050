"""Loaders in the official layouts: real fixtures (shared/fixtures) and small synthetic trees."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import (
    DATASET_DIRS,
    DatasetLayoutError,
    TrainAugmentation,
    TrainTransform,
    build_dataset,
    list_pairs,
)
from datasets.labels import CITYSCAPES_PALETTE, LABEL_ID_TO_TRAIN_ID

MAPILLARY_EXPECTED = {
    "mmseg_mapillary_fullres": {
        "robustnet": {0: 2613332, 2: 780241, 4: 1244957, 5: 26550, 7: 283877, 8: 1931309, 10: 1535388, 11: 878049,
                      13: 15133, 14: 2225544, 255: 369812},
        "rein": {0: 2814841, 2: 780241, 4: 1244957, 5: 32381, 7: 287571, 8: 1931309, 10: 1535388, 11: 878049,
                 13: 15133, 14: 2225544, 255: 158778},
    },
    "mmseg_pseudo_mapillary": {
        "robustnet": {2: 9157, 5: 112, 255: 731},
        "rein": {2: 9157, 5: 843},
    },
}


def counts(label: np.ndarray) -> dict[int, int]:
    u, c = np.unique(label, return_counts=True)
    return dict(zip(u.tolist(), c.tolist()))


def link_mapillary(fixture: Path, root: Path, package: str) -> Path:
    """Symlink an mmseg flat Mapillary fixture into the official v1.2- or v2.0-package layout."""
    split = root / "mapillary" / "validation"
    (split / "images").mkdir(parents=True)
    lab = split / ("labels" if package == "v1.2" else "v1.2/labels")
    lab.mkdir(parents=True)
    for f in (fixture / "images").iterdir():
        os.symlink(f, split / "images" / f.name)
    for f in (fixture / "v1.2").iterdir():
        os.symlink(f, lab / f.name)
    return root


@pytest.mark.parametrize("fixture,package", [("mmseg_mapillary_fullres", "v2.0"), ("mmseg_pseudo_mapillary", "v1.2")])
def test_mapillary_fixture_counts_both_mappings(fixtures_dir, tmp_path, fixture, package):
    root = link_mapillary(Path(fixtures_dir) / fixture, tmp_path, package)
    for mapping, expected in MAPILLARY_EXPECTED[fixture].items():
        ds = build_dataset("mapillary", "validation", root, mapillary_mapping=mapping)
        assert len(ds) == 1 and ds.split == "validation" and ds.pairs[0].name == "__CRyFzoDOXn6unQ6a3DnQ"
        sample = ds.load(0)
        assert sample["image"].dtype == np.uint8 and sample["image"].shape[2] == 3
        assert sample["label"].shape == sample["image"].shape[:2]
        assert counts(sample["label"]) == expected
        assert sample["dataset"] == "mapillary"
    # 'val' alias
    assert build_dataset("mapillary", "val", root).split == "validation"


def test_mapillary_missing_label_folder(fixtures_dir, tmp_path):
    (tmp_path / "mapillary" / "validation" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"v1\.2/labels"):
        build_dataset("mapillary", "validation", tmp_path)


def test_cityscapes_prefers_label_ids(fixtures_dir, tmp_path):
    os.symlink(Path(fixtures_dir) / "mmseg_pseudo_cityscapes", tmp_path / "cityscapes")
    ds = build_dataset("cityscapes", "val", tmp_path)
    assert [p.name for p in ds.pairs] == ["frankfurt_000000_000294"]
    assert ds.pairs[0].label.name.endswith("_gtFine_labelIds.png")
    sample = ds.load(0)
    assert sample["image"].shape == (128, 256, 3) and sample["label"].shape == (128, 256)
    train_ids = np.asarray(Image.open(str(ds.pairs[0].label).replace("labelIds", "labelTrainIds")))
    agree = (sample["label"] == train_ids).mean()
    assert 0.995 < agree < 1.0  # 77 boundary pixels differ in the fixture (downscaled separately)


def test_cityscapes_train_ids_only_fixture(fixtures_dir, tmp_path):
    os.symlink(Path(fixtures_dir) / "vltseg_cityscapes_fullres", tmp_path / "cityscapes")
    ds = build_dataset("cityscapes", "val", tmp_path)
    assert ds.pairs[0].label.name.endswith("_gtFine_labelTrainIds.png")
    assert counts(ds.load(0)["label"]) == {
        0: 718059, 1: 95855, 2: 322449, 3: 22614, 5: 29669, 6: 160, 7: 5466, 8: 233870, 10: 25015, 11: 96980,
        12: 27512, 13: 39348, 18: 48698, 255: 431457}


def test_bdd_pairs_by_masks_not_colormaps(fixtures_dir, tmp_path):
    os.symlink(Path(fixtures_dir) / "mmseg_pseudo_bdd100k", tmp_path / "bdd100k")
    ds = build_dataset("bdd100k", "val", tmp_path)
    assert [p.name for p in ds.pairs] == ["7d06fefd-f7be05a6", "7d128593-0ccfea4c", "7d15b18b-1e0d6e3f"]
    assert all("masks" in str(p.label) and "colormaps" not in str(p.label) for p in ds.pairs)
    sample = ds.load(0)
    assert sample["image"].shape == (8, 8, 3)  # gray JPEG expanded to RGB
    assert set(np.unique(sample["label"])) <= {2, 8}
    assert len(build_dataset("bdd100k", "train", tmp_path)) == 3


# ---------------------------------------------------------------------------------------------
# synthetic GTA5 tree
def write_gta(root: Path, n: int = 4, size=(24, 16)) -> Path:
    gta = root / "gta"
    (gta / "images").mkdir(parents=True)
    (gta / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        w, h = size
        cv2.imwrite(str(gta / "images" / f"{i:05d}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        ids = rng.choice(np.array([0, 4, 7, 8, 9, 11, 26, 33], np.uint8), (h, w))
        im = Image.frombytes("P", (w, h), ids.tobytes())
        im.putpalette(CITYSCAPES_PALETTE.ravel().tolist())
        im.save(gta / "labels" / f"{i:05d}.png")
    return root


def test_gta_palette_labels_map_label_ids(tmp_path):
    root = write_gta(tmp_path)
    ds = build_dataset("gta5", "all", root)
    assert len(ds) == 4 and ds.pairs[0].name == "00001"
    raw = np.asarray(Image.open(ds.pairs[0].label))
    assert Image.open(ds.pairs[0].label).mode == "P"
    np.testing.assert_array_equal(ds.load(0)["label"], LABEL_ID_TO_TRAIN_ID[raw])
    assert set(np.unique(ds.load(0)["label"])) <= {0, 1, 2, 13, 18, 255}


def test_gta_rgb_label_is_rejected(tmp_path):
    root = write_gta(tmp_path, n=2)
    bad = root / "gta" / "labels" / "00002.png"
    Image.open(bad).convert("RGB").save(bad)
    ds = build_dataset("gta5", "all", root)
    ds.load(0)
    with pytest.raises(DatasetLayoutError, match="00002.png") as err:
        ds.load(1)
    assert "palette" in str(err.value)


def test_gta_split_lists(tmp_path):
    root = write_gta(tmp_path)
    (root / "gta" / "gtav_split_train.txt").write_text("00001.png\n00003\n\n")
    (root / "gta" / "gtav_split_val.txt").write_text("00002.png\n")
    assert [p.name for p in build_dataset("gta5", "train", root).pairs] == ["00001", "00003"]
    assert [p.name for p in build_dataset("gta5", "val", root).pairs] == ["00002"]
    with pytest.raises(DatasetLayoutError, match="gtav_split_test.txt"):
        build_dataset("gta5", "test", root)
    (root / "gta" / "gtav_split_test.txt").write_text("00009.png\n")
    with pytest.raises(DatasetLayoutError, match="00009"):
        build_dataset("gta5", "test", root)


def test_gta_missing_labels_reported(tmp_path):
    root = write_gta(tmp_path, n=5)
    for i in (2, 4):
        (root / "gta" / "labels" / f"{i:05d}.png").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("gta5", "all", root)
    msg = str(err.value)
    assert "2 image(s) have no label" in msg and "00002.png" in msg and "00004.png" in msg


def test_missing_dataset_folder_draws_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("cityscapes", "val", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cityscapes") in msg
    assert "leftImg8bit/{train,val,test}/<city>" in msg and "gtFine" in msg and "fix:" in msg
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_dataset("gta5", "all", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("kitti", "val", tmp_path)


def test_accepted_folder_names(tmp_path):
    assert DATASET_DIRS["gta5"] == ("gta", "gta5")
    write_gta(tmp_path, n=1)
    os.rename(tmp_path / "gta", tmp_path / "gta5")
    assert len(build_dataset("gta5", "all", tmp_path)) == 1


def test_size_mismatch(tmp_path):
    root = write_gta(tmp_path, n=1)
    img = root / "gta" / "images" / "00001.png"
    cv2.imwrite(str(img), np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("gta5", "all", root).load(0)
    assert "00001.png" in str(err.value) and "images" in str(err.value) and "labels" in str(err.value)
    sample = build_dataset("gta5", "all", root, size_mismatch="resize_image").load(0)
    assert sample["image"].shape == (16, 24, 3)


def test_list_pairs_never_decodes(tmp_path):
    root = write_gta(tmp_path, n=2)
    (root / "gta" / "images" / "00001.png").write_bytes(b"not a png")
    pairs = list_pairs("gta5", "all", root)
    assert [p.name for p in pairs] == ["00001", "00002"]


def test_getitem_seeded_augmentation(tmp_path):
    root = write_gta(tmp_path, n=2, size=(40, 30))
    tf = TrainTransform(TrainAugmentation(crop_size=(16, 16), ratio_range=(0.5, 1.5)))
    ds = build_dataset("gta5", "all", root, transform=tf)
    a, b = ds[(1, 1234)], ds[(1, 1234)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, 16, 16)
    assert a["label"].dtype == torch.uint8 and a["name"] == "00002" and a["dataset"] == "gta5"
    assert torch.equal(ds[1]["image"], ds[(1, 1)]["image"])  # plain index seeds with the index
    assert any(not torch.equal(ds[(1, s)]["image"], a["image"]) for s in range(5))
    raw = build_dataset("gta5", "all", root)[0]
    assert isinstance(raw["image"], np.ndarray)
    with pytest.raises(IndexError):
        ds[5]


def test_synthia_16bit_labels(tmp_path):
    base = tmp_path / "synthia"
    (base / "RGB").mkdir(parents=True)
    (base / "GT" / "LABELS").mkdir(parents=True)
    cv2.imwrite(str(base / "RGB" / "0000000.png"), np.zeros((4, 6, 3), np.uint8))
    gt = np.zeros((4, 6, 3), np.uint16)
    gt[..., 2] = np.array([3, 1, 8, 22, 13, 21])[None]  # R channel (BGR index 2): class ids
    gt[..., 1] = 999  # instance ids
    cv2.imwrite(str(base / "GT" / "LABELS" / "0000000.png"), gt)
    ds = build_dataset("synthia", "all", tmp_path)
    np.testing.assert_array_equal(ds.load(0)["label"][0], [0, 10, 13, 255, 255, 3])
    cv2.imwrite(str(base / "GT" / "LABELS" / "0000000.png"), np.zeros((4, 6), np.uint8))
    with pytest.raises(DatasetLayoutError, match="R channel"):
        ds.load(0)
    with pytest.raises(DatasetLayoutError, match="synthia_split_train.txt"):
        build_dataset("synthia", "train", tmp_path)


def test_acdc_conditions(tmp_path):
    for cond in ("fog", "night", "rain", "snow"):
        img_dir = tmp_path / "acdc" / "rgb_anon" / cond / "val" / "GOPR0001"
        gt_dir = tmp_path / "acdc" / "gt" / cond / "val" / "GOPR0001"
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        cv2.imwrite(str(img_dir / f"GOPR0001_frame_00000{len(cond)}_rgb_anon.png"), np.zeros((4, 4, 3), np.uint8))
        ids = np.full((4, 4), 26 if cond == "snow" else 5, np.uint8)
        suffix = "_gt_labelIds.png" if cond == "snow" else "_gt_labelTrainIds.png"
        Image.fromarray(ids).save(gt_dir / f"GOPR0001_frame_00000{len(cond)}{suffix}")
    assert len(build_dataset("acdc", "val", tmp_path)) == 4
    fog = build_dataset("acdc", "fog/val", tmp_path)
    assert len(fog) == 1 and fog.load(0)["label"].max() == 5
    assert build_dataset("acdc", "snow/val", tmp_path).load(0)["label"].max() == 13  # labelId 26 = car
    with pytest.raises(ValueError):
        build_dataset("acdc", "haze/val", tmp_path)
