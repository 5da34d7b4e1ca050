"""Every row of the label tables (shared/specs/datasets.md §2, §4, §5.2) through the real loaders, on tiny
hand-made label files in each official layout; plus GTA5's official split.mat and the test geometry."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from datasets import build_dataset
from datasets.labels import CITYSCAPES_PALETTE
from datasets.transforms import HeightCenterCrop, TestTransform

# datasets.md §4.1, written out again here (not imported) so the loaders are checked against the spec
CITYSCAPES_TABLE = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# datasets.md §2: SYNTHIA id -> train id
SYNTHIA_TABLE = {0: 255, 1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 13: 255,
                 14: 255, 15: 6, 16: 9, 17: 12, 18: 14, 19: 15, 20: 16, 21: 3, 22: 255}
# datasets.md §5.2, the two right-hand columns, ids 0..65
X = 255
MAPILLARY_HRDA = [X, X, 1, 4, X, X, 3, X, X, X, X, X, X, 0, X, 1, X, 2, X, 11, 12, 12, 12, X, 0, X, X, 10, X, 9, 8,
                  X, X, X, X, X, X, X, X, X, X, 0, X, X, X, 5, X, 5, 6, X, 7, X, 18, X, 15, 13, X, 17, 16, X, X, 14,
                  X, X, X, X]
MAPILLARY_REIN = [X, X, 1, 4, X, X, 3, 0, 0, 1, 0, 1, X, 0, 0, 1, X, 2, X, 11, 12, 12, 12, 0, 0, X, X, 10, X, 9, 8,
                  X, X, X, X, X, X, X, X, X, X, X, X, X, 5, 5, 7, 5, 6, 7, 7, X, 18, X, 15, 13, X, 17, 16, X, X, 14,
                  X, X, X, X]


def grid(values) -> np.ndarray:
    """A 2 x N label image holding each value twice (one column per value)."""
    return np.tile(np.asarray(values, dtype=np.uint8)[None], (2, 1))


def expected(values, table, default=255) -> np.ndarray:
    return grid([table.get(v, default) if isinstance(table, dict) else table[v] for v in values])


def write_png(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        im = Image.fromarray(array)  # 8-bit gray
    else:
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())
        im.putpalette(palette.ravel().tolist())
    im.save(path)


def write_image(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


LABEL_IDS = list(range(34)) + [34, 200, 255]  # every labelId row plus values outside the table


def test_cityscapes_every_label_id(tmp_path):
    stem = "frankfurt_000000_000001"
    write_image(tmp_path / "cityscapes/leftImg8bit/val/frankfurt" / f"{stem}_leftImg8bit.png", 2, len(LABEL_IDS))
    write_png(tmp_path / "cityscapes/gtFine/val/frankfurt" / f"{stem}_gtFine_labelIds.png", grid(LABEL_IDS))
    np.testing.assert_array_equal(build_dataset("cityscapes", "val", tmp_path).load(0)["label"],
                                  expected(LABEL_IDS, CITYSCAPES_TABLE))


def test_cityscapes_train_id_file(tmp_path):
    values = list(range(19)) + [19, 100, 254, 255]
    stem = "lindau_000000_000019"
    write_image(tmp_path / "cityscapes/leftImg8bit/val/lindau" / f"{stem}_leftImg8bit.png", 2, len(values))
    write_png(tmp_path / "cityscapes/gtFine/val/lindau" / f"{stem}_gtFine_labelTrainIds.png", grid(values))
    np.testing.assert_array_equal(build_dataset("cityscapes", "val", tmp_path).load(0)["label"],
                                  expected(values, {v: v for v in range(19)}))


def test_gta5_palette_every_label_id(tmp_path):
    write_image(tmp_path / "gta/images/00001.png", 2, len(LABEL_IDS))
    write_png(tmp_path / "gta/labels/00001.png", grid(LABEL_IDS), CITYSCAPES_PALETTE)
    assert Image.open(tmp_path / "gta/labels/00001.png").mode == "P"
    np.testing.assert_array_equal(build_dataset("gta5", "all", tmp_path).load(0)["label"],
                                  expected(LABEL_IDS, CITYSCAPES_TABLE))


@pytest.mark.parametrize("suffix", ["_gt_labelIds.png", "_gt_labelTrainIds.png"])
def test_acdc_every_row(tmp_path, suffix):
    values = LABEL_IDS if suffix == "_gt_labelIds.png" else list(range(19)) + [19, 200, 255]
    table = CITYSCAPES_TABLE if suffix == "_gt_labelIds.png" else {v: v for v in range(19)}
    for cond in ("fog", "night", "rain", "snow"):
        stem = f"GOPR0{len(cond)}00_frame_000001"
        write_image(tmp_path / "acdc/rgb_anon" / cond / "val" / f"GOPR0{len(cond)}00" / f"{stem}_rgb_anon.png",
                    2, len(values))
        write_png(tmp_path / "acdc/gt" / cond / "val" / f"GOPR0{len(cond)}00" / f"{stem}{suffix}", grid(values))
    ds = build_dataset("acdc", "val", tmp_path)
    assert len(ds) == 4
    for i in range(4):
        np.testing.assert_array_equal(ds.load(i)["label"], expected(values, table))
    assert len(build_dataset("acdc", "night/val", tmp_path)) == 1


def test_bdd100k_masks_are_train_ids(tmp_path):
    values = list(range(19)) + [19, 100, 255]
    write_image(tmp_path / "bdd100k/images/10k/val/abcd1234-00000001.jpg", 2, len(values))
    write_png(tmp_path / "bdd100k/labels/sem_seg/masks/val/abcd1234-00000001.png", grid(values))
    np.testing.assert_array_equal(build_dataset("bdd100k", "val", tmp_path).load(0)["label"],
                                  expected(values, {v: v for v in range(19)}))


def test_synthia_every_row_of_the_table(tmp_path):
    ids = list(range(23)) + [300, 1000]  # beyond the table (and beyond 8 bits)
    write_image(tmp_path / "synthia/RGB/0000000.png", 2, len(ids))
    gt = np.zeros((2, len(ids), 3), np.uint16)
    gt[..., 2] = np.asarray(ids, np.uint16)[None]  # R channel = class id (BGR index 2)
    gt[..., 1] = 4242  # instance ids must not leak into the class
    gt[..., 0] = 7
    (tmp_path / "synthia/GT/LABELS").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "synthia/GT/LABELS/0000000.png"), gt)
    label = build_dataset("synthia", "all", tmp_path).load(0)["label"]
    np.testing.assert_array_equal(label[0], [SYNTHIA_TABLE.get(i, 255) for i in ids])
    assert not ({9, 14, 16} & set(SYNTHIA_TABLE[i] for i in range(23) if i not in (16, 18, 20)))


@pytest.mark.parametrize("package", ["v1.2", "v2.0"])
def test_mapillary_both_mappings_every_id(tmp_path, package):
    ids = list(range(66))
    labels = tmp_path / "mapillary/validation" / ("labels" if package == "v1.2" else "v1.2/labels")
    write_image(tmp_path / "mapillary/validation/images/key_0001.jpg", 2, 66)
    pal = np.random.default_rng(0).integers(0, 256, (256, 3)).astype(np.uint8)
    write_png(labels / "key_0001.png", grid(ids), pal)
    for mapping, table in (("robustnet", MAPILLARY_HRDA), ("rein", MAPILLARY_REIN)):
        label = build_dataset("mapillary", "val", tmp_path, mapillary_mapping=mapping).load(0)["label"]
        np.testing.assert_array_equal(label, expected(ids, table), err_msg=mapping)
    assert [i for i in ids if MAPILLARY_HRDA[i] != MAPILLARY_REIN[i]] == [7, 8, 9, 10, 11, 14, 23, 41, 44, 46, 49]


def test_gta5_official_split_mat(tmp_path):
    for i in range(1, 6):
        write_image(tmp_path / f"gta/images/{i:05d}.png", 2, 3)
        write_png(tmp_path / f"gta/labels/{i:05d}.png", grid([7, 8, 0]), CITYSCAPES_PALETTE)
    from datasets import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="split.mat"):
        build_dataset("gta5", "official_train", tmp_path)
    savemat(tmp_path / "gta/split.mat", {"trainIds": np.array([[1], [3], [4]]), "valIds": np.array([[2]]),
                                          "testIds": np.array([[5], [9]])})
    assert [p.name for p in build_dataset("gta5", "official_train", tmp_path).pairs] == ["00001", "00003", "00004"]
    assert [p.name for p in build_dataset("gta5", "official_val", tmp_path).pairs] == ["00002"]
    with pytest.raises(DatasetLayoutError, match="00009"):
        build_dataset("gta5", "official_test", tmp_path)
    assert len(build_dataset("gta5", "all", tmp_path)) == 5


def test_prehalve_and_center_crop_geometry():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (301, 403, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (301, 403), dtype=np.uint8)
    # Rein: (w // 2, h // 2) for image and label, nearest for the label, then keep-ratio to (1024, 512)
    out = TestTransform((1024, 512), prehalve=True)({"image": image, "label": label, "name": "x"})
    assert tuple(out["label"].shape) == (150, 201) and out["ori_size"] == (150, 201)
    assert tuple(out["image"].shape) == (3, 512, 686)
    assert set(np.unique(out["label"].numpy())) <= set(np.unique(label))
    # RobustNet/FAMix: height 200 -> width int(403/301*200) = 267 -> centre crop 200x200 (landscape)
    crop = HeightCenterCrop(200, (200, 200), image_pad=0, label_pad=0)
    out = TestTransform(None, center_crop=crop)({"image": image, "label": label, "name": "x"})
    assert tuple(out["label"].shape) == (200, 200) and tuple(out["image"].shape) == (3, 200, 200)
    # portrait: padded left/right; padded label pixels are 0 (road, RobustNet's quirk), padded image black
    tall_label = np.full((403, 301), 255, np.uint8)
    out = TestTransform(None, center_crop=crop)({"image": image.transpose(1, 0, 2).copy(), "label": tall_label,
                                                 "name": "x"})
    lab = out["label"].numpy()
    assert lab.shape == (200, 200)
    w = int(301 / 403 * 200)  # 149 columns of content, 51 padded
    assert (lab == 0).sum() == 200 * (200 - w) and (lab == 255).sum() == 200 * w
    assert (lab[:, :25] == 0).all() and (lab[:, -26:] == 0).all()
    assert float(out["image"][:, :, :25].max()) == 0.0


def test_prehalve_on_the_real_mapillary_fixture(fixtures_dir, tmp_path):
    base = Path(fixtures_dir) / "mmseg_mapillary_fullres"
    (tmp_path / "mapillary/validation").mkdir(parents=True)
    (tmp_path / "mapillary/validation/images").symlink_to(base / "images")
    (tmp_path / "mapillary/validation/labels").symlink_to(base / "v1.2")
    ds = build_dataset("mapillary", "validation", tmp_path, mapillary_mapping="rein",
                       transform=TestTransform((1024, 512), prehalve=True))
    item = ds[0]
    assert item["ori_size"] == (1494, 1992)  # 2988 x 3984 halved: scoring at half resolution
    assert tuple(item["image"].shape) == (3, 512, 683)  # datasets.md §8.1: e.g. 2016x1512 -> 683x512
