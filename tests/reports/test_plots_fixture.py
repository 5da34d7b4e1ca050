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


def _labelled_ticks(ax):
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    return [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]


def test_cost_axis_ticks_are_readable_for_small_and_large_ranges():
    import matplotlib.pyplot as plt

    from reports.plots import nice_ticks, set_cost_axis

    # written out: 1-2-5 per decade over 3M..310M trainable parameters
    assert nice_ticks(3.0, 310.0, log=True) == [2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]
    assert nice_ticks(2.99, 3.2, log=True) == [2.9, 3.0, 3.1, 3.2, 3.3]  # within a decade: a linear grid
    for xs in ([2.99, 3.05, 3.2], [6.0, 9.0, 14.0], [0.31, 2.99, 20.0, 310.0], [5.0]):
        fig, ax = plt.subplots()
        ax.plot(xs, [1] * len(xs), "o")
        set_cost_axis(ax, xs, log=True)
        ticks = _labelled_ticks(ax)
        assert len(ticks) >= 2, (xs, ticks)
        assert all(text and "$" not in text and "^" not in text for _, text in ticks), (xs, ticks)
        assert all(abs(float(text.replace(",", "")) - pos) <= 1e-6 * max(1.0, pos) for pos, text in ticks)
        assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()]
        lo, hi = ax.get_xlim()
        assert lo <= min(xs) and max(xs) <= hi
        plt.close(fig)
