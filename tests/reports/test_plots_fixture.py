"""reports.plots: every figure is produced (PNG + SVG) from the fixture result records."""

from reports.aggregate import read_leaderboard
from reports.plots import main, make_plots


def test_plots_from_fixture_records(fixture_csv, tmp_path):
    out = tmp_path / "plots"
    paths = make_plots(read_leaderboard(fixture_csv), out)
    names = {p.name for p in paths}
    for stem in ("heatmap_real-gta2cbm-default-", "reported_vs_reproduced", "rpd_real-gta2cbm-default-",
                 "rpd_real-gta2cbm-flip-", "cost_real-gta2cbm-default-", "heatmap_miniature-gta2cbm-default-",
                 "rpd_real-city2bm-default-"):
        for ext in ("png", "svg"):
            assert any(n.startswith(stem) and n.endswith(ext) for n in names), (stem, ext)
    heatmaps = [n for n in names if n.startswith("heatmap_real-gta2cbm-default-") and n.endswith(".png")]
    assert sorted(n.rsplit("_", 1)[1] for n in heatmaps) == ["BDD100K.png", "Cityscapes.png", "Mapillary.png"]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 2000, p
        assert data.startswith(b"\x89PNG") if p.suffix == ".png" else b"<svg" in data[:2000]
    scatter = (out / "reported_vs_reproduced.svg").read_text()
    assert "miniature" not in scatter.lower()  # miniature rows never share a figure with real data


def test_plots_cli_handles_empty_and_missing_csv(tmp_path, capsys):
    assert main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "p")]) == 2
    empty = tmp_path / "leaderboard.csv"
    empty.write_text("kind\n")
    assert main(["--csv", str(empty), "--out", str(tmp_path / "p"), "--format", "png"]) == 0
    assert "nothing to plot" in capsys.readouterr().out
