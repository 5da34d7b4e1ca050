"""Bad input gets a clear error (file named, fix said) at load time, and `python -m datasets.check` reports
every kind of layout problem with counts and examples."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets import DatasetLayoutError, MissingLabelsError, build_dataset
from datasets.check import check_data_root, check_dataset, main as check_main
from datasets.labels import CITYSCAPES_PALETTE


def palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids, np.uint8).tobytes())
    im.putpalette(CITYSCAPES_PALETTE.ravel().tolist())
    im.save(path)


def rgb(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 120, np.uint8))


def make_gta(root: Path, n: int = 6, h: int = 8, w: int = 12) -> Path:
    for i in range(1, n + 1):
        rgb(root / f"gta/images/{i:05d}.png", h, w)
        palette_png(root / f"gta/labels/{i:05d}.png", np.full((h, w), 7 + i % 3, np.uint8))
    return root


def make_synthia(root: Path, n: int = 3) -> Path:
    (root / "synthia/GT/LABELS").mkdir(parents=True)
    for i in range(n):
        rgb(root / f"synthia/RGB/{i:07d}.png", 6, 8)
        gt = np.zeros((6, 8, 3), np.uint16)
        gt[..., 2] = 3
        cv2.imwrite(str(root / f"synthia/GT/LABELS/{i:07d}.png"), gt)
    return root


def make_cityscapes(root: Path, n: int = 3) -> Path:
    for i in range(n):
        stem = f"frankfurt_000000_{i:06d}"
        rgb(root / f"cityscapes/leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png", 4, 8)
        p = root / f"cityscapes/gtFine/val/frankfurt/{stem}_gtFine_labelIds.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 8), 26, np.uint8)).save(p)
    return root


# ---------------------------------------------------------------------------------------------- load time
@pytest.mark.parametrize("dataset,split,make,remove,expect", [
    ("gta5", "all", make_gta, "gta/labels", "labels"),
    ("synthia", "all", make_synthia, "synthia/GT/LABELS", "GT/LABELS"),
    ("cityscapes", "val", make_cityscapes, "cityscapes/gtFine/val", "gtFine/val"),
])
def test_missing_folder_names_path_and_fix(tmp_path, dataset, split, make, remove, expect):
    import shutil

    make(tmp_path)
    shutil.rmtree(tmp_path / remove)
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset(dataset, split, tmp_path)
    msg = str(err.value)
    assert expect in msg and "expected layout" in msg and "fix:" in msg


def test_partial_download_lists_missing_labels_and_keeps_the_rest(tmp_path):
    make_synthia(tmp_path, n=4)
    (tmp_path / "synthia/GT/LABELS/0000002.png").unlink()
    with pytest.raises(MissingLabelsError) as err:
        build_dataset("synthia", "all", tmp_path)
    assert "1 image(s) have no label file" in str(err.value) and "0000002.png" in str(err.value)
    assert [p.name for p in err.value.pairs] == ["0000000", "0000001", "0000003"]
    assert err.value.missing[0][1].name == "0000002.png"
    assert isinstance(err.value, DatasetLayoutError) and "fix:" in str(err.value)


def test_eight_bit_synthia_label_is_a_clear_error(tmp_path):
    make_synthia(tmp_path, n=1)
    cv2.imwrite(str(tmp_path / "synthia/GT/LABELS/0000000.png"), np.full((6, 8, 3), 3, np.uint8))  # 8-bit RGB
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("synthia", "all", tmp_path).load(0)
    msg = str(err.value)
    assert "0000000.png" in msg and "8-bit" in msg and "16-bit" in msg and "GT/COLOR" in msg


def test_colour_cityscapes_label_is_a_clear_error(tmp_path):
    make_cityscapes(tmp_path, n=1)
    p = next((tmp_path / "cityscapes/gtFine").rglob("*_labelIds.png"))
    Image.fromarray(np.full((4, 8, 3), (0, 0, 142), np.uint8)).save(p)  # colour rendering saved as labelIds
    with pytest.raises(DatasetLayoutError, match="mode 'RGB'") as err:
        build_dataset("cityscapes", "val", tmp_path).load(0)
    assert p.name in str(err.value)


def test_size_mismatch_names_both_files(tmp_path):
    make_gta(tmp_path, n=2)
    rgb(tmp_path / "gta/images/00002.png", 5, 5)
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("gta5", "all", tmp_path).load(1)
    msg = str(err.value)
    assert "images/00002.png is 5x5" in msg and "labels/00002.png is 12x8" in msg and "fix:" in msg


# ---------------------------------------------------------------------------------------------- check
def broken_root(tmp_path: Path) -> Path:
    make_gta(tmp_path, n=8)
    (tmp_path / "gta/labels/00003.png").unlink()  # partial download
    rgb(tmp_path / "gta/images/00004.png", 5, 5)  # size mismatch
    Image.open(tmp_path / "gta/labels/00005.png").convert("RGB").save(tmp_path / "gta/labels/00005.png")  # RGB
    palette_png(tmp_path / "gta/labels/00006.png", np.full((8, 12), 77, np.uint8))  # unknown labelId 77
    make_synthia(tmp_path, n=3)
    cv2.imwrite(str(tmp_path / "synthia/GT/LABELS/0000001.png"), np.full((6, 8, 3), 3, np.uint8))  # 8-bit
    make_cityscapes(tmp_path, n=2)
    return tmp_path


def kinds(split_report) -> dict[str, int]:
    return {p.kind: p.count for p in split_report.problems}


def test_check_reports_each_kind_with_counts_and_examples(tmp_path):
    root = broken_root(tmp_path)
    reports = {r.dataset: r for r in check_data_root(root, sample=-1)}
    assert set(reports) == {"gta5", "synthia", "cityscapes"}
    gta = reports["gta5"].splits[0]
    assert gta.split == "all" and gta.num_pairs == 7
    assert kinds(gta) == {"missing_labels": 1, "size_mismatch": 1, "label_encoding": 1, "unknown_ids": 1}
    problems = {p.kind: p for p in gta.problems}
    assert "00003.png" in problems["missing_labels"].examples[0]
    assert "00004.png is 5x5" in problems["size_mismatch"].examples[0]
    assert "converted to colours" in problems["label_encoding"].message and "00005.png" in problems[
        "label_encoding"].examples[0]
    assert "77" in problems["unknown_ids"].message and "00006.png" in problems["unknown_ids"].examples[0]
    assert all(p.fix for p in gta.problems)
    syn = reports["synthia"].splits[0]
    assert kinds(syn) == {"label_encoding": 1}
    assert "8-bit" in syn.problems[0].message and "0000001.png" in syn.problems[0].examples[0]
    assert reports["cityscapes"].num_problems == 0


def test_check_sample_limits_decoding(tmp_path):
    make_gta(tmp_path, n=8)
    for i in range(1, 9):
        palette_png(tmp_path / f"gta/labels/{i:05d}.png", np.full((8, 12), 50, np.uint8))  # all unknown
    rep = check_dataset("gta5", tmp_path, sample=3)
    split = rep.splits[0]
    assert split.num_decoded == 3 and kinds(split) == {"unknown_ids": 3}
    assert check_dataset("gta5", tmp_path, sample=0).splits[0].num_decoded == 0
    assert check_dataset("cityscapes", tmp_path) is None


def test_check_cli_text_json_and_exit_status(tmp_path, capsys):
    root = broken_root(tmp_path)
    assert check_main(["--data-root", str(root), "--sample", "-1"]) == 1
    out = capsys.readouterr().out
    assert "[missing_labels]" in out and "[size_mismatch]" in out and "fix:" in out and "problem(s)" in out
    assert check_main(["--data-root", str(root), "--dataset", "cityscapes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["dataset"] == "cityscapes" and data[0]["num_problems"] == 0
    assert check_main(["--data-root", str(tmp_path / "nowhere")]) == 2


def test_check_passes_on_the_real_fixtures(fixtures_dir, tmp_path):
    fx = Path(fixtures_dir)
    (tmp_path / "cityscapes").symlink_to(fx / "mmseg_pseudo_cityscapes")
    (tmp_path / "bdd100k").symlink_to(fx / "mmseg_pseudo_bdd100k")
    (tmp_path / "mapillary/validation").mkdir(parents=True)
    (tmp_path / "mapillary/validation/images").symlink_to(fx / "mmseg_mapillary_fullres/images")
    (tmp_path / "mapillary/validation/labels").symlink_to(fx / "mmseg_mapillary_fullres/v1.2")
    reports = check_data_root(tmp_path)
    assert {r.dataset for r in reports} == {"cityscapes", "bdd100k", "mapillary"}
    assert all(r.num_problems == 0 for r in reports), [r.render() for r in reports]
