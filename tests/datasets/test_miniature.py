"""The built-in miniature benchmark: deterministic, complete, readable by the real loaders."""

import hashlib
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset
from datasets.labels import CITYSCAPES_PALETTE
from datasets.miniature import (
    CONDITIONS,
    ELEMENT_CITYSCAPES_ID,
    ELEMENT_MAPILLARY_ID,
    ELEMENT_TRAIN_ID,
    MINIATURE_VERSION,
    E,
    MiniatureParams,
    ensure_miniature,
    generate_miniature,
    is_miniature_root,
    miniature_counts,
    miniature_root,
    render_scene,
)

SMALL = MiniatureParams(seed=3, count_scale=0.1)  # gta 16/4/4, cityscapes 8/4, bdd 4, map 4, acdc 1x4, synthia 4/2

# (name, split) to read per domain; acdc reads the four conditions together
READS = {
    "gta5": ["all", "train", "val", "test"],
    "cityscapes": ["train", "val"],
    "bdd100k": ["val"],
    "mapillary": ["validation"],
    "acdc": ["val", "fog/val", "night/val", "rain/val", "snow/val"],
    "synthia": ["all", "train", "val"],
}


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini") / "root"
    generate_miniature(root, SMALL)
    return root


def train_id_counts(ds) -> np.ndarray:
    c = np.zeros(256, np.int64)
    for i in range(len(ds)):
        c += np.bincount(ds.load(i)["label"].ravel(), minlength=256)
    return c


def test_generation_is_deterministic(small_root, tmp_path):
    # per-image seeds depend only on (seed, domain, split, index): a subset regenerates byte-identically
    again = tmp_path / "again"
    domains = ("cityscapes", "mapillary", "synthia")
    generate_miniature(again, MiniatureParams(seed=SMALL.seed, count_scale=SMALL.count_scale, domains=domains))
    for d in ("cityscapes", "mapillary", "synthia"):
        assert tree_hash(again / d) == tree_hash(small_root / d), d
    other = tmp_path / "other"
    generate_miniature(other, MiniatureParams(seed=4, count_scale=0.05, domains=("cityscapes",)))
    a = (small_root / "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png").read_bytes()
    b = (other / "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png").read_bytes()
    assert a != b  # the seed matters


def test_manifest(small_root):
    manifest = json.loads((small_root / "MINIATURE.json").read_text())
    assert manifest["miniature"] is True and manifest["version"] == MINIATURE_VERSION
    assert manifest["counts"] == miniature_counts(SMALL)
    assert manifest["params"]["seed"] == 3 and is_miniature_root(small_root)
    assert miniature_counts()["gta5"] == {"train": 160, "val": 40, "test": 40}


def test_loaders_read_every_domain_and_all_classes_appear(small_root):
    counts = miniature_counts(SMALL)
    for name, splits in READS.items():
        for split in splits:
            ds = build_dataset(name, split, small_root)
            if name == "gta5" and split == "all":
                assert len(ds) == sum(counts["gta5"].values())
            elif name == "acdc":
                assert len(ds) == (sum(counts["acdc"].values()) if split == "val" else counts["acdc"][split])
            elif name == "synthia" and split == "all":
                assert len(ds) == sum(counts["synthia"].values())
            else:
                assert len(ds) == counts[name][split], (name, split)
        present = set(np.flatnonzero(train_id_counts(build_dataset(name, splits[0], small_root))[:19]).tolist())
        expected = set(range(19)) - ({9, 14, 16} if name == "synthia" else set())
        assert present == expected, (name, sorted(expected - present))


def test_every_split_has_ignore_pixels(small_root):
    for name in ("gta5", "cityscapes", "bdd100k", "mapillary"):
        assert train_id_counts(build_dataset(name, READS[name][0], small_root))[255] > 0, name


def test_gta_labels_are_palette_label_ids(small_root):
    files = sorted((small_root / "gta" / "labels").glob("*.png"))
    assert len(files) == 24
    seen = set()
    for f in files[:6]:
        im = Image.open(f)
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[:34], CITYSCAPES_PALETTE[:34])
        seen |= set(np.unique(np.asarray(im)).tolist())
    assert {7, 8, 11, 23, 26} <= seen  # labelIds, not train ids
    assert seen & {0, 1, 4, 9, 10}  # some non-train (void) labelIds
    lists = {s: (small_root / "gta" / f"gtav_split_{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(v) for v in lists.values()] == [16, 4, 4]
    assert not (set(lists["train"]) & set(lists["val"])) and all(n.endswith(".png") for n in lists["test"])


def test_other_label_formats(small_root):
    mask = np.asarray(Image.open(next((small_root / "bdd100k/labels/sem_seg/masks/val").glob("*.png"))))
    assert set(np.unique(mask).tolist()) <= set(range(19)) | {255}
    assert (mask[-1] == 255).all()  # dashboard at the bottom is ignore
    cs = np.asarray(Image.open(next((small_root / "cityscapes/gtFine/val").rglob("*_gtFine_labelIds.png"))))
    assert (cs[-1] == 1).any()  # ego vehicle labelId
    syn = cv2.imread(str(next((small_root / "synthia/GT/LABELS").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert syn.dtype == np.uint16 and syn.ndim == 3 and syn[..., 2].max() <= 22
    mp = Image.open(next((small_root / "mapillary/validation/labels").glob("*.png")))
    assert mp.mode == "P" and np.asarray(mp).max() <= 65


def test_mapillary_mapping_changes_counts(small_root):
    raw = set()
    for f in (small_root / "mapillary/validation/labels").glob("*.png"):
        raw |= set(np.unique(np.asarray(Image.open(f))).tolist())
    assert 2 in raw and len({7, 23, 41, 44, 49} & raw) >= 3  # curb + ids where the two mappings disagree
    robust = train_id_counts(build_dataset("mapillary", "validation", small_root, mapillary_mapping="robustnet"))
    rein = train_id_counts(build_dataset("mapillary", "validation", small_root, mapillary_mapping="rein"))
    assert not np.array_equal(robust, rein)
    assert robust[255] != rein[255] and robust.sum() == rein.sum()


def test_element_encodings_consistent():
    assert ELEMENT_TRAIN_ID[E.ROAD] == 0 and ELEMENT_TRAIN_ID[E.CROSSWALK] == 0 and ELEMENT_TRAIN_ID[E.EGO] == 255
    assert ELEMENT_CITYSCAPES_ID[E.PARKING] == 9 and ELEMENT_MAPILLARY_ID[E.BIKE_LANE] == 7
    assert set(ELEMENT_TRAIN_ID[list(E)].tolist()) == set(range(19)) | {255}


@pytest.mark.parametrize("condition", CONDITIONS)
def test_conditions_render(condition):
    clear, lab0 = render_scene([1, 2], "acdc", feature=1)
    img, lab = render_scene([1, 2], "acdc", feature=1, condition=condition)
    assert img.shape == clear.shape and img.dtype == np.uint8
    if condition != "night":  # weather is applied on top of the same scene
        np.testing.assert_array_equal(lab, lab0)
    assert not np.array_equal(img, clear)
    if condition == "night":
        assert img.mean() < 0.6 * clear.mean()
    with pytest.raises(ValueError):
        render_scene([1, 2], "acdc", condition="sandstorm")


def test_ensure_miniature_caches_and_is_concurrency_safe(tmp_path, monkeypatch):
    params = MiniatureParams(seed=1, count_scale=0.05, domains=("bdd100k",))
    monkeypatch.setenv("DGSS_CACHE_DIR", str(tmp_path / "envcache"))
    assert miniature_root(params=params).parent == tmp_path / "envcache" / "miniature"
    assert miniature_root(params=params).name.startswith(f"{MINIATURE_VERSION}-")
    cache = tmp_path / "cache"
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_miniature(cache, params=params))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    root = results[0]
    assert root == miniature_root(cache, params) and is_miniature_root(root)
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no temp leftovers
    marker_mtime = (root / "MINIATURE.json").stat().st_mtime_ns
    assert ensure_miniature(cache, params=params) == root
    assert (root / "MINIATURE.json").stat().st_mtime_ns == marker_mtime  # not regenerated
    assert len(build_dataset("bdd100k", "val", root)) == miniature_counts(params)["bdd100k"]["val"]
    (root / "MINIATURE.json").unlink()  # an incomplete root is regenerated
    assert not is_miniature_root(root)
    assert is_miniature_root(ensure_miniature(cache, params=params))
    assert is_miniature_root(ensure_miniature(cache, params=params, force=True))
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]


def test_domain_materials_repaint_each_element_the_same_way_in_every_image():
    """A target domain's look: one fixed RGB offset per element (not a global colour jitter); GTA5 and the
    pretraining world have none; ACDC shares Cityscapes' materials."""
    import dataclasses

    from datasets.miniature.elements import _BASE_RGB
    from datasets.miniature.scene import domain_materials
    from datasets.miniature.styles import MATERIALS_STD, STYLES

    assert not domain_materials(STYLES["gta5"]).any()
    expected = np.random.default_rng([0x4D41, 1]).normal(0.0, 36.0, _BASE_RGB.shape)
    assert MATERIALS_STD == 36.0
    np.testing.assert_allclose(domain_materials(STYLES["cityscapes"]), expected, atol=1e-4)
    np.testing.assert_array_equal(domain_materials(STYLES["acdc"]), domain_materials(STYLES["cityscapes"]))
    seeds = {d: STYLES[d].materials_seed for d in ("cityscapes", "bdd100k", "mapillary", "synthia")}
    assert len(set(seeds.values())) == 4 and all(STYLES[d].materials == 36.0 for d in seeds)
    # rendered: the same scene with and without materials differs on the road by the road's offset
    plain = dataclasses.replace(STYLES["gta5"], saturation=(1, 1), hue_shift=(0, 0), brightness=(1, 1),
                                contrast=(1, 1), texture=0.0, instance_jitter=0.0)
    painted = dataclasses.replace(plain, materials=36.0, materials_seed=1)
    a, lab_a = render_scene([3, 4], plain)
    b, lab_b = render_scene([3, 4], painted)
    np.testing.assert_array_equal(lab_a, lab_b)
    road = lab_a == E.ROAD
    shift = b[road].astype(float).mean(0) - a[road].astype(float).mean(0)
    np.testing.assert_allclose(shift, np.clip(_BASE_RGB[E.ROAD] + expected[E.ROAD], 0, 255) - _BASE_RGB[E.ROAD],
                               atol=1.5)
