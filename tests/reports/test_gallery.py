"""reports.gallery: the paper-style grid (image | ground truth | one column per run) from saved predictions."""

import numpy as np
from PIL import Image

from reports.gallery import compose, gallery_figures, load_runs, main

SKY, ROAD, CAR = (70, 130, 180), (128, 64, 128), (0, 0, 142)  # Cityscapes colours, written out


def test_grid_columns_show_each_runs_prediction(tmp_path, write_run):
    a = write_run(tmp_path / "runs", "rein", "dinov2_vitl14", quality=0.8, artifacts=True).parent
    b = write_run(tmp_path / "runs", "tqdm", "eva02_clip_vitl14", quality=0.5, artifacts=True).parent
    runs = load_runs([a, b])
    figures = gallery_figures(runs)
    assert [f.target for f in figures] == ["cityscapes", "bdd100k", "mapillary"]  # protocol order
    fig = figures[0]
    assert fig.images == ["cityscapes_0000", "cityscapes_0001"] and [r.run_id for r in fig.runs] == [a.name, b.name]
    img = np.asarray(compose(fig, tile_width=192))
    # tile size: 192 wide, 96 high (the 48x96 ground truth's aspect); tile row r of a label maps to row r // 2
    for row in range(2):
        x0, y0, x1, y1 = fig.boxes[(row, 1)]  # ground truth: horizon at 24, car at rows 30-39, cols 10-29
        assert (x1 - x0, y1 - y0) == (192, 96)
        assert tuple(img[y0 + 2 * 23, x0 + 100]) == SKY and tuple(img[y0 + 2 * 24, x0 + 100]) == ROAD
        assert tuple(img[y0 + 2 * 35, x0 + 2 * 20]) == CAR
        for col, shift in ((2, 4), (3, 10)):  # horizon moved by round(20 * (1 - quality))
            x0, y0, _, _ = fig.boxes[(row, col)]
            assert tuple(img[y0 + 2 * (23 + shift), x0 + 100]) == SKY
            assert tuple(img[y0 + 2 * (24 + shift), x0 + 100]) == ROAD
    # the three files per target and a readable grid on disk
    assert main([str(a), str(b), "--out", str(tmp_path / "g")]) == 0
    files = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert len(files) == 3 and all(f.startswith("gallery_gta2cbm_default_") for f in files)
    assert Image.open(tmp_path / "g" / files[0]).size[0] == 4 * 320 + 5 * 4


def test_missing_prediction_is_a_grey_tile_and_no_gallery_is_an_error(tmp_path, write_run, capsys):
    a = write_run(tmp_path / "runs", "rein", "dinov2_vitl14", artifacts=True).parent
    b = write_run(tmp_path / "runs", "tqdm", "eva02_clip_vitl14", artifacts=True).parent
    (b / "predictions" / "cityscapes" / "cityscapes_0001.pred.png").unlink()
    fig = gallery_figures(load_runs([a, b]))[0]
    img = np.asarray(compose(fig, tile_width=96))
    x0, y0, x1, y1 = fig.boxes[(1, 3)]
    assert tuple(img[y0 + 3, x1 - 3]) == (200, 200, 200)
    plain = write_run(tmp_path / "plain", "rein", "dinov2_vitl14").parent
    assert main([str(plain), "--out", str(tmp_path / "g")]) == 2
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "g")]) == 2
    assert "no such run folder" in capsys.readouterr().err
