"""ACDC test export in the server's submission format: labelIds PNGs named like the inputs."""

import dataclasses
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.export import (
    ExportError,
    check_submission,
    encode_prediction,
    export_predictions,
    main as export_main,
    submission_relpath,
    zip_submission,
)
from benchmarks.protocols import InferenceSpec, build_test_transform, get_protocol, load_split

FRAMES = {"fog": ["GOPR0475_frame_000041", "GOPR0475_frame_000042"], "night": ["GOPR0594_frame_000651"],
          "rain": ["GOPR0572_frame_000145"], "snow": ["GOPR0122_frame_000161"]}


@pytest.fixture
def acdc_root(tmp_path) -> Path:
    for cond, stems in FRAMES.items():
        for stem in stems:
            seq = stem.split("_frame_")[0]
            path = tmp_path / "acdc/rgb_anon" / cond / "test" / seq / f"{stem}_rgb_anon.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((36, 64, 3), 40, np.uint8))  # 16:9 like 1920x1080
    return tmp_path


def half_road_half_car(images: torch.Tensor) -> torch.Tensor:
    """Scores: train id 0 (road) on the left half, 13 (car) on the right half, at the input size."""
    b, _, h, w = images.shape
    out = torch.zeros(b, 19, h, w)
    out[:, 0, :, : w // 2] = 1
    out[:, 13, :, w // 2:] = 1
    return out


def test_export_writes_label_ids_named_like_the_inputs(acdc_root, tmp_path):
    split = get_protocol("city2acdc", variant="rein").exports[0]
    split = dataclasses.replace(split, test_resize=(96, 54))  # a test resize, kept small
    assert get_protocol("city2acdc", variant="rein").exports[0].test_resize == (960, 540)
    ds = load_split(split, acdc_root, build_test_transform(split))
    assert len(ds) == 5 and all(p.label is None for p in ds.pairs)
    assert submission_relpath(ds, 0) == Path("fog/test/GOPR0475/GOPR0475_frame_000041_rgb_anon.png")
    out = tmp_path / "export" / "acdc-test"
    res = export_predictions(half_road_half_car, ds, InferenceSpec("whole", None, None), out,
                             key="acdc-test", progress=False)
    assert (res.num_images, res.num_written, res.id_format) == (5, 5, "labelIds")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = sorted(f"{c}/test/{s.split('_frame_')[0]}/{s}_rgb_anon.png" for c, ss in FRAMES.items() for s in ss)
    assert files == expected
    pred = np.asarray(Image.open(out / expected[0]))
    assert Image.open(out / expected[0]).mode == "L"
    assert pred.shape == (36, 64)  # native input size, not the test resize
    assert set(np.unique(pred[:, :30]).tolist()) == {7} and set(np.unique(pred[:, 34:]).tolist()) == {26}
    assert check_submission(out, ds) == []
    # resumable: existing files are kept
    assert export_predictions(half_road_half_car, ds, InferenceSpec("whole", None, None), out,
                              progress=False).num_written == 0


def test_check_submission_finds_missing_extra_and_wrong_files(acdc_root, tmp_path):
    split = get_protocol("city2acdc", miniature=True).exports[0]  # native size: fast
    ds = load_split(split, acdc_root, build_test_transform(split))
    out = tmp_path / "sub"
    export_predictions(half_road_half_car, ds, InferenceSpec("whole", None, None), out, progress=False)
    first, second = (out / submission_relpath(ds, i) for i in (0, 1))
    first.unlink()
    Image.fromarray(np.full((10, 10), 7, np.uint8)).save(second)  # wrong size
    Image.fromarray(np.full((36, 64), 7, np.uint8)).save(out / "fog/test/extra.png")
    Image.fromarray(np.full((36, 64), 3, np.uint8)).save(out / submission_relpath(ds, 2))  # labelId 3 is void
    problems = "\n".join(check_submission(out, ds))
    assert "1 missing prediction(s)" in problems and "GOPR0475_frame_000041" in problems
    assert "1 unexpected file(s)" in problems and "size mismatch" in problems and "not labelIds" in problems


def test_export_cli_checks_and_zips(acdc_root, tmp_path, capsys):
    split = get_protocol("city2acdc", miniature=True).exports[0]  # native size: fast
    ds = load_split(split, acdc_root, build_test_transform(split))
    export_dir = tmp_path / "run" / "export"
    export_predictions(half_road_half_car, ds, InferenceSpec("whole", None, None), export_dir / "acdc-test",
                       progress=False)
    assert export_main([str(export_dir), "--data-root", str(acdc_root), "--protocol", "city2acdc", "--zip"]) == 0
    assert "holds all 5 predictions" in capsys.readouterr().out
    with zipfile.ZipFile(export_dir / "acdc-test.zip") as zf:
        assert sorted(zf.namelist()) == sorted(p.relative_to(export_dir / "acdc-test").as_posix()
                                               for p in (export_dir / "acdc-test").rglob("*.png"))
    next((export_dir / "acdc-test").rglob("*.png")).unlink()
    assert export_main([str(export_dir), "--data-root", str(acdc_root), "--protocol", "city2bmacdc"]) == 1
    assert "NOT ready" in capsys.readouterr().out
    assert export_main([str(export_dir), "--data-root", str(acdc_root), "--protocol", "gta2cbm"]) == 2
    assert zip_submission(export_dir / "acdc-test", tmp_path / "x.zip").is_file()


def test_failing_image_is_named(acdc_root, tmp_path):
    split = get_protocol("city2acdc", miniature=True).exports[0]  # native size: fast
    ds = load_split(split, acdc_root, build_test_transform(split))
    bad = ds.pairs[3].image
    bad.write_bytes(b"truncated")
    with pytest.raises(ExportError) as err:
        export_predictions(half_road_half_car, ds, InferenceSpec("whole", None, None), tmp_path / "e", progress=False)
    msg = str(err.value)
    assert "image #3" in msg and bad.stem in msg and "3 prediction file(s)" in msg


def test_encode_prediction_formats():
    ids = np.arange(19, dtype=np.uint8)[None]
    assert encode_prediction(ids).tolist() == [[7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31,
                                                32, 33]]
    assert encode_prediction(ids, "trainIds").tolist() == ids.tolist()
    with pytest.raises(ValueError, match="id_format"):
        encode_prediction(ids, "colors")
