"""The loaders' decoding pinned value by value (datasets/base.py, gta5.py, synthia.py, mapillary.py): pixel
reads against values written by hand, PNG headers of files written here, sample indexing and the seed each
index gets, concatenated splits, and every message in full."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets import ConcatSegmentationDataset, DatasetLayoutError
from datasets.base import PngHeader, SamplePair, SegmentationDataset, png_header, read_image, read_index_png
from datasets.gta5 import GTA5_LAYOUT, GTA5Dataset
from datasets.labels import CITYSCAPES_PALETTE
from datasets.mapillary import MAPILLARY_FIX, canonical_mapillary_split, MAPILLARY_LAYOUT, MapillaryDataset, mapillary_label_dir
from datasets.synthia import SYNTHIA_FIX, SYNTHIA_LAYOUT, SynthiaDataset

# a 2 x 3 RGB image whose channels differ everywhere: (R, G, B) per pixel
RGB = np.array([[[10, 20, 30], [40, 50, 60], [70, 80, 90]],
                [[100, 110, 120], [130, 140, 150], [160, 170, 180]]], np.uint8)


def write_rgb(path: Path, rgb: np.ndarray = RGB) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def write_index(path: Path, ids: np.ndarray, mode: str = "P") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("L" if mode == "L" else "P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    if mode == "P":
        im.putpalette(CITYSCAPES_PALETTE.ravel().tolist())
    im.save(path)
    return path


IDS = np.array([[7, 8, 0], [26, 255, 33]], np.uint8)


# ------------------------------------------------------------------------------------------ reading
def test_read_image_is_rgb_in_file_order(tmp_path):
    np.testing.assert_array_equal(read_image(write_rgb(tmp_path / "a.png")), RGB)
    gray = np.array([[0, 50, 255]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    # a JPEG whose EXIF says "rotate 90": the pixels are kept in the file's order (labels are stored that way)
    im = Image.fromarray(np.zeros((2, 6, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "r.jpg").shape == (2, 6, 3)
    # formats cv2 cannot read (TGA; gray PCX) go through PIL, to RGB too
    Image.fromarray(RGB).save(tmp_path / "a.tga")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tga"), RGB)
    Image.fromarray(gray).save(tmp_path / "g.pcx")
    np.testing.assert_array_equal(read_image(tmp_path / "g.pcx"), np.repeat(gray[..., None], 3, axis=2))
    with pytest.raises(FileNotFoundError) as e:
        read_image(tmp_path / "none.png")
    assert str(e.value) == f"image file not found: {tmp_path / 'none.png'}"


@pytest.mark.parametrize("mode", ["P", "L"])
def test_read_index_png_returns_the_raw_ids(tmp_path, mode):
    out = read_index_png(write_index(tmp_path / "l.png", IDS, mode))
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, IDS)


def test_read_index_png_message_in_full(tmp_path):
    path = write_rgb(tmp_path / "c.png")
    with pytest.raises(DatasetLayoutError) as e:
        read_index_png(path, what="GTA5 label", hint="Use the palette files.")
    assert str(e.value) == (
        f"GTA5 label file {path} has PIL mode 'RGB'; expected an 8-bit single-channel (palette 'P' or gray 'L') PNG "
        f"whose pixel values are class ids. Use the palette files.\n  expected: {path}\n  expected layout:\n"
        "    8-bit PNG, one class id per pixel (not a colour visualisation)\n"
        "  fix: use the official label files, not colour-rendered label images")
    with pytest.raises(DatasetLayoutError) as e:
        read_index_png(path)
    assert f"label file {path} has PIL mode 'RGB'; expected" in str(e.value)
    assert "are class ids.\n  expected:" in str(e.value)  # no trailing space without a hint


@pytest.mark.parametrize("color_type,bits,channels,kind", [
    (0, 8, 1, "gray"), (2, 16, 3, "RGB"), (3, 8, 1, "palette"), (4, 8, 2, "gray+alpha"), (6, 8, 4, "RGBA"),
    (5, 8, 0, "?"),
])
def test_png_header_fields(color_type, bits, channels, kind):
    head = PngHeader(640, 480, bits, color_type)
    assert head.channels == channels and head.describe() == f"{bits}-bit {kind}"


def test_png_header_of_real_files(tmp_path):
    cv2.imwrite(str(tmp_path / "s.png"), np.zeros((3, 5, 3), np.uint16))
    assert png_header(tmp_path / "s.png") == PngHeader(5, 3, 16, 2)
    assert png_header(write_index(tmp_path / "p.png", np.zeros((300, 260), np.uint8))) == PngHeader(260, 300, 8, 3)
    assert png_header(write_index(tmp_path / "l.png", IDS, "L")) == PngHeader(3, 2, 8, 0)
    Image.fromarray(np.zeros((2, 2, 4), np.uint8)).save(tmp_path / "a.png")
    assert png_header(tmp_path / "a.png") == PngHeader(2, 2, 8, 6)
    data = (tmp_path / "s.png").read_bytes()
    big = bytearray(data)
    big[16:20] = (2**24 + 70000).to_bytes(4, "big")  # sizes in all 4 bytes: read as 4 big-endian bytes
    big[20:24] = (2**25 + 3).to_bytes(4, "big")
    (tmp_path / "big.png").write_bytes(bytes(big))
    assert png_header(tmp_path / "big.png") == PngHeader(2**24 + 70000, 2**25 + 3, 16, 2)
    (tmp_path / "short.png").write_bytes(data[:28])
    assert png_header(tmp_path / "short.png") is None
    (tmp_path / "just.png").write_bytes(data[:29])
    assert png_header(tmp_path / "just.png") == PngHeader(5, 3, 16, 2)
    for i in (0, 7):
        bad = bytearray(data)
        bad[i] ^= 1
        (tmp_path / "bad.png").write_bytes(bytes(bad))
        assert png_header(tmp_path / "bad.png") is None, i
    for i in (12, 15):
        bad = bytearray(data)
        bad[i] ^= 0x20
        (tmp_path / "bad.png").write_bytes(bytes(bad))
        assert png_header(tmp_path / "bad.png") is None, i
    cv2.imwrite(str(tmp_path / "x.jpg"), np.zeros((40, 40, 3), np.uint8))
    assert png_header(tmp_path / "x.jpg") is None


# --------------------------------------------------------------------------------------- decoding
class _Lut(SegmentationDataset):
    label_lut = np.array([(255 - v) % 256 for v in range(256)], np.uint8)  # v -> 255 - v


def test_base_decode_label_rules(tmp_path):
    ids = np.array([[0, 5, 18], [19, 200, 255]], np.uint8)
    plain = write_index(tmp_path / "x.png", ids, "L")
    train = write_index(tmp_path / "x_labelTrainIds.png", ids, "L")
    sanitised = [[0, 5, 18], [255, 255, 255]]
    ds = _Lut("d", "val", tmp_path, [])
    np.testing.assert_array_equal(ds.decode_label(plain), [[255, 250, 237], [236, 55, 0]])
    np.testing.assert_array_equal(ds.decode_label(train), sanitised)
    np.testing.assert_array_equal(SegmentationDataset("d", "val", tmp_path, []).decode_label(plain), sanitised)


def test_gta5_decode_label(tmp_path):
    ds = GTA5Dataset("gta5", "all", tmp_path, [])
    np.testing.assert_array_equal(ds.decode_label(write_index(tmp_path / "00001.png", IDS)), [[0, 1, 255], [13, 255, 18]])
    ids = np.array([[0, 18, 19], [7, 254, 255]], np.uint8)
    np.testing.assert_array_equal(ds.decode_label(write_index(tmp_path / "00002_labelTrainIds.png", ids, "L")),
                                  [[0, 18, 255], [7, 255, 255]])
    path = write_rgb(tmp_path / "00003.png")
    with pytest.raises(DatasetLayoutError) as e:
        ds.decode_label(path)
    assert str(e.value).startswith(
        f"GTA5 label file {path} has PIL mode 'RGB'; expected an 8-bit single-channel (palette 'P' or gray 'L') PNG "
        "whose pixel values are class ids. GTA5 labels must be the official 8-bit palette PNGs (index = Cityscapes "
        "labelId); do not convert them to RGB.\n")


def _synthia_label(path: Path, ids, channels: int = 3) -> Path:
    gt = np.zeros((1, len(ids), channels), np.uint16)
    gt[..., 2] = ids
    gt[..., 1] = 1000
    gt[..., 0] = 3
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), gt)
    return path


def test_synthia_decode_label(tmp_path):
    ds = SynthiaDataset("synthia", "all", tmp_path, [])
    ids = [3, 1, 255, 256, 254, 65535, 22, 259, 264]  # 259 and 264 are 3 and 8 modulo 256: still ignored
    np.testing.assert_array_equal(ds.decode_label(_synthia_label(tmp_path / "a.png", ids)),
                                  [[0, 10, 255, 255, 255, 255, 255, 255, 255]])
    np.testing.assert_array_equal(ds.decode_label(_synthia_label(tmp_path / "b.png", [2, 8], 4)), [[2, 13]])  # BGRA
    ids8 = np.array([[0, 18, 19]], np.uint8)
    np.testing.assert_array_equal(ds.decode_label(write_index(tmp_path / "c_labelTrainIds.png", ids8, "L")),
                                  [[0, 18, 255]])
    with pytest.raises(FileNotFoundError) as e:
        ds.decode_label(tmp_path / "none.png")
    assert str(e.value) == f"cannot read SYNTHIA label {tmp_path / 'none.png'}"


@pytest.mark.parametrize("array,shape,dtype,hint", [
    (np.zeros((2, 3, 3), np.uint8), "(2, 3, 3)", "uint8",
     " (an 8-bit colour PNG: a GT/COLOR visualisation, or a label re-saved by an 8-bit tool, which garbles the ids)"),
    (np.zeros((2, 3), np.uint16), "(2, 3)", "uint16", ""),
    (np.zeros((2, 3), np.uint8), "(2, 3)", "uint8", ""),
])
def test_synthia_label_errors_in_full(tmp_path, array, shape, dtype, hint):
    path = tmp_path / "0000001.png"
    cv2.imwrite(str(path), array)
    with pytest.raises(DatasetLayoutError) as e:
        SynthiaDataset("synthia", "all", tmp_path, []).decode_label(path)
    layout = "\n".join("    " + line for line in SYNTHIA_LAYOUT.splitlines())
    assert str(e.value) == (
        f"synthia: label {path} has shape {shape} ({dtype}){hint}; expected the official 16-bit 3-channel GT/LABELS "
        f"PNG with the class id in the R channel\n  expected: {path}\n  expected layout:\n{layout}\n  fix: use GT/LABELS "
        "(not GT/COLOR) from the official archive, read unchanged (cv2.IMREAD_UNCHANGED); re-extract files that an "
        "image tool converted to 8 bits")
    assert SYNTHIA_FIX  # the dataset-level fix is for missing folders, not for a bad file


# ------------------------------------------------------------------------------------- samples
def _gta_pairs(tmp_path: Path, n: int, size=(3, 2)) -> list[SamplePair]:
    pairs = []
    for i in range(n):
        rgb = np.full((size[1], size[0], 3), 10 * i, np.uint8)
        image = write_rgb(tmp_path / f"images/{i:05d}.png", rgb)
        label = write_index(tmp_path / f"labels/{i:05d}.png", np.full((size[1], size[0]), 7 + i, np.uint8))
        pairs.append(SamplePair(image, label, f"{i:05d}"))
    return pairs


def _record(sample, rng):
    return {"name": sample["name"], "draw": int(rng.integers(1 << 30))}


def test_load_and_getitem(tmp_path):
    pairs = _gta_pairs(tmp_path, 3)
    ds = GTA5Dataset("gta5", "all", tmp_path, pairs)
    s = ds.load(1)
    assert s["name"] == "00001" and s["dataset"] == "gta5" and s["image"].dtype == np.uint8
    np.testing.assert_array_equal(s["image"], np.full((2, 3, 3), 10, np.uint8))
    np.testing.assert_array_equal(s["label"], np.full((2, 3), 1, np.uint8))  # labelId 8 -> sidewalk
    assert ds[-1]["name"] == "00002" and ds[-3]["name"] == "00000"
    for bad in (3, -4, 100):
        with pytest.raises(IndexError) as e:
            ds[bad]
        assert str(e.value) == f"index {bad} out of range for GTA5Dataset(name='gta5', split='all', root={str(tmp_path)!r}, n=3)"
    seeded = GTA5Dataset("gta5", "all", tmp_path, pairs, transform=_record)
    draw = lambda seed: int(np.random.default_rng(seed).integers(1 << 30))  # noqa: E731
    assert seeded[2] == {"name": "00002", "draw": draw(2)}  # a plain index seeds with the index
    assert seeded[(2, 77)] == {"name": "00002", "draw": draw(77)}
    assert seeded[-1] == {"name": "00002", "draw": draw(2)}  # ds[-1] is ds[2] (a negative seed was an error)
    assert seeded[(np.int64(1), 5)] == {"name": "00001", "draw": draw(5)}


def test_unlabelled_split_and_size_mismatch(tmp_path):
    pairs = _gta_pairs(tmp_path, 1, size=(3, 2))
    image = write_rgb(tmp_path / "big.png", np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3))
    ds = GTA5Dataset("gta5", "all", tmp_path, [SamplePair(pairs[0].image, None, "x")])
    np.testing.assert_array_equal(ds.load(0)["label"], np.full((2, 3), 255, np.uint8))
    assert ds.load(0)["label"].dtype == np.uint8
    mismatch = [SamplePair(image, pairs[0].label, "m")]
    resized = GTA5Dataset("gta5", "all", tmp_path, mismatch, size_mismatch="resize_image").load(0)
    expected = cv2.resize(np.asarray(Image.open(image)), (3, 2), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resized["image"], expected)
    assert resized["label"].shape == (2, 3)
    with pytest.raises(DatasetLayoutError) as e:
        GTA5Dataset("gta5", "all", tmp_path, mismatch).load(0)
    assert str(e.value) == (
        f"gta5: image and label sizes differ for sample 'm':\n    image {image} is 6x4\n"
        f"    label {pairs[0].label} is 3x2\n  expected: both files of a pair at the same resolution\n"
        "  fix: re-extract the pair from the official archive, drop it from the split, or build the dataset with "
        "size_mismatch='resize_image'")
    with pytest.raises(ValueError) as e:
        GTA5Dataset("gta5", "all", tmp_path, mismatch, size_mismatch="crop")
    assert str(e.value) == "size_mismatch must be 'error' or 'resize_image', got 'crop'"


def test_concatenated_splits(tmp_path):
    a = GTA5Dataset("gta5", "all", tmp_path, _gta_pairs(tmp_path / "a", 2), transform=_record)
    b = GTA5Dataset("synthia", "train", tmp_path, _gta_pairs(tmp_path / "b", 3))
    both = ConcatSegmentationDataset([a, b])
    assert len(both) == 5 and both.name == "gta5+synthia" and both.split == "all+train" and both.transform is _record
    assert [p.image for p in both.pairs] == [p.image for p in a.pairs + b.pairs]
    where = [both.locate(i) for i in range(5)]
    assert [(part is a, j) for part, j in where] == [(True, 0), (True, 1), (False, 0), (False, 1), (False, 2)]
    assert both.locate(-1)[0] is b and both.locate(-1)[1] == 2 and both.locate(-5) == (a, 0)
    assert both.locate(np.int64(3)) == (b, 1)
    for bad in (5, -6):
        with pytest.raises(IndexError) as e:
            both.locate(bad)
        assert str(e.value).startswith(f"index {bad if bad >= 0 else bad + 5} out of range for ConcatSegmentationDataset(")
    assert both.load(3)["name"] == "00001" and both.load(3)["dataset"] == "synthia"
    draw = lambda seed: int(np.random.default_rng(seed).integers(1 << 30))  # noqa: E731
    assert both[1] == {"name": "00001", "draw": draw(1)}
    assert both[(1, 9)] == {"name": "00001", "draw": draw(9)}
    a2 = GTA5Dataset("gta5", "all", tmp_path, _gta_pairs(tmp_path / "c", 2), transform=_record)
    b2 = GTA5Dataset("gta5", "all", tmp_path, _gta_pairs(tmp_path / "d", 3), transform=_record)
    both = ConcatSegmentationDataset([a2, b2])
    assert both[4] == {"name": "00002", "draw": draw(4)}  # the global index seeds, not the part's
    assert both[0] == {"name": "00000", "draw": draw(0)}
    assert both[(4, 11)] == {"name": "00002", "draw": draw(11)}
    assert both[-1] == {"name": "00002", "draw": draw(4)} and both[-3] == {"name": "00000", "draw": draw(2)}
    with pytest.raises(ValueError) as e:
        ConcatSegmentationDataset([])
    assert str(e.value) == "ConcatSegmentationDataset needs at least one dataset"


# ------------------------------------------------------------------------------------- Mapillary
def test_mapillary_label_dir_prefers_the_v12_package(tmp_path):
    (tmp_path / "validation/v1.2/labels").mkdir(parents=True)
    assert mapillary_label_dir(tmp_path, "validation") == tmp_path / "validation/v1.2/labels"
    (tmp_path / "validation/labels").mkdir()
    assert mapillary_label_dir(tmp_path, "validation") == tmp_path / "validation/labels"
    with pytest.raises(DatasetLayoutError) as e:
        mapillary_label_dir(tmp_path, "training")
    layout = "\n".join("    " + line for line in MAPILLARY_LAYOUT.splitlines())
    assert str(e.value) == (
        f"mapillary: no v1.2 label folder for split 'training' (looked for {tmp_path / 'training/labels'} and "
        f"{tmp_path / 'training/v1.2/labels'})\n  expected: {tmp_path / 'training/labels'}\n  expected layout:\n"
        f"{layout}\n  fix: {MAPILLARY_FIX}")


def test_mapillary_dataset_mapping(tmp_path):
    ds = MapillaryDataset("mapillary", "validation", tmp_path, [])
    assert ds.mapping == "robustnet" and ds.label_lut[13] == 0 and ds.label_lut[7] == 255
    assert canonical_mapillary_split("val") == "validation" and canonical_mapillary_split("train") == "training"
    assert canonical_mapillary_split("training") == "training"
    rein = MapillaryDataset("mapillary", "validation", tmp_path, [], mapping="rein")
    assert rein.mapping == "rein" and rein.label_lut[7] == 0 and rein.name == "mapillary"
    with pytest.raises((KeyError, ValueError), match="hrda"):
        MapillaryDataset("mapillary", "validation", tmp_path, [], mapping="hrda")
    with pytest.raises(ValueError) as e:
        canonical_mapillary_split("testing")
    assert str(e.value) == ("Mapillary split must be one of ('training', 'validation') (or train/val), "
                            "got 'testing'")


def test_gta5_layout_constant_draws_the_labels():
    assert "labels/00001.png ... 24966.png     8-bit palette PNG, index = Cityscapes labelId" in GTA5_LAYOUT


# ------------------------------------------------------------------------------------ GTA5 split lists
def _gta_message(problem: str, expected: Path, fix: str | None = None) -> str:
    from datasets.gta5 import GTA5_FIX

    layout = "\n".join("    " + line for line in GTA5_LAYOUT.splitlines())
    return f"{problem}\n  expected: {expected}\n  expected layout:\n{layout}\n  fix: {fix or GTA5_FIX}"


def _gta_tree(root: Path, names=("00001.png", "00002.png", "00003.jpg", "00004.JPG", "notes.txt"),
              labels=("00001.png", "00002_labelTrainIds.png", "00003.png", "00004.png")) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n in names:
        (root / "images" / n).write_bytes(b"")
    for n in labels:
        (root / "labels" / n).write_bytes(b"")
    return root


def test_gta5_pairs_suffixes_and_label_fallback(tmp_path):
    from datasets.gta5 import gta5_pairs

    root = _gta_tree(tmp_path / "gta")
    (root / "labels" / "00001_labelTrainIds.png").write_bytes(b"")  # the official file wins over a converted one
    pairs = gta5_pairs(root, "all")
    assert [(p.image.name, p.label.name, p.name) for p in pairs] == [
        ("00001.png", "00001.png", "00001"), ("00002.png", "00002_labelTrainIds.png", "00002"),
        ("00003.jpg", "00003.png", "00003"), ("00004.JPG", "00004.png", "00004")]
    assert pairs[0].image == root / "images/00001.png" and pairs[0].label == root / "labels/00001.png"
    (root / "gtav_split_val.txt").write_text("00004.png\n  00002 \n")
    assert [(p.image.name, p.name) for p in gta5_pairs(root, "val")] == [("00004.JPG", "00004"), ("00002.png", "00002")]


def test_gta5_pairs_messages_in_full(tmp_path):
    from datasets.gta5 import gta5_pairs

    with pytest.raises(ValueError) as e:
        gta5_pairs(tmp_path, "trainval")
    assert str(e.value) == ("GTA5 split must be one of ('all', 'train', 'val', 'test', 'official_train', 'official_val', "
                            "'official_test'), got 'trainval'")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(tmp_path, "all")
    assert str(e.value) == _gta_message(f"gta5: folder {tmp_path / 'labels'} is missing", tmp_path / "labels")
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "readme.txt").write_bytes(b"")
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(tmp_path, "all")
    assert str(e.value) == _gta_message(f"gta5: no images in {tmp_path / 'images'}", tmp_path / "images/00001.png")
    root = _gta_tree(tmp_path / "gta")
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "test")
    lst = root / "gtav_split_test.txt"
    assert str(e.value) == _gta_message(f"gta5: split list file {lst} is missing (needed for split 'test')", lst)
    lst.write_text("\n".join(f"{i:05d}.png" for i in (1, 9, 8, 7, 6, 5, 12)))
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "test")
    assert str(e.value) == _gta_message(
        f"gta5: 6 image(s) listed in {lst} are missing from {root / 'images'}, e.g. 00009, 00008, 00007, 00006, 00005",
        root / "images/00009.png")
    (root / "labels" / "00003.png").unlink()
    (root / "labels" / "00004.png").unlink()
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "all")
    assert str(e.value).startswith(
        f"gta5: 2 image(s) have no label file, e.g.\n    {root / 'images/00003.jpg'} -> {root / 'labels/00003.png'}\n"
        f"    {root / 'images/00004.JPG'} -> {root / 'labels/00004.png'}\n  expected: {root / 'labels/00003.png'}\n")
    from datasets.gta5 import GTA5_FIX

    assert str(e.value).endswith(f"\n  fix: {GTA5_FIX}")
    assert [p.name for p in e.value.pairs] == ["00001", "00002"]


def test_gta5_official_split_messages_in_full(tmp_path):
    from scipy.io import savemat

    from datasets.gta5 import gta5_pairs

    root = _gta_tree(tmp_path / "gta")
    mat = root / "split.mat"
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "official_val")
    assert str(e.value) == _gta_message(
        f"gta5: official split file {mat} is missing (needed for split 'official_val')", mat,
        "take split.mat from read_mapping.zip on the GTA5 download page and put it next to images/")
    mat.write_bytes(b"not a mat file")
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "official_val")
    assert str(e.value).startswith(f"gta5: cannot read {mat}: ") and f"\n  expected: {mat}\n" in str(e.value)
    assert str(e.value).endswith("\n  fix: re-extract split.mat from read_mapping.zip")
    assert isinstance(e.value.__cause__, Exception)
    savemat(mat, {"trainIds": np.array([[4], [1]]), "testIds": np.array([[2, 3]])})
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "official_val")
    assert str(e.value) == _gta_message(f"gta5: {mat} has no array 'valIds' (has ['testIds', 'trainIds'])", mat,
                                        "use the official split.mat from read_mapping.zip")
    assert [p.name for p in gta5_pairs(root, "official_train")] == ["00004", "00001"]  # the file's order
    assert [p.name for p in gta5_pairs(root, "official_test")] == ["00002", "00003"]
    savemat(mat, {"valIds": np.array([[1], [7], [8], [9], [10], [11], [12]])})
    with pytest.raises(DatasetLayoutError) as e:
        gta5_pairs(root, "official_val")
    assert str(e.value) == _gta_message(
        f"gta5: 6 image(s) of 'official_val' in {mat} are missing from {root / 'images'}, e.g. 00007, 00008, 00009, "
        "00010, 00011", root / "images/00007.png")
