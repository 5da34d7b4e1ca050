"""Released-checkpoint rows in leaderboard.csv (``kind=released``), the three-column view (published |
released re-evaluated | our retraining, with deltas and the > 1 mIoU flag), the HTML section and the
paper-table cells. Expected numbers come from the fixture records' JSON and reported.csv, not from the code
under test."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.protocols import get_protocol
from reports.aggregate import AggregateOptions, merge_into_csv, render_csv, write_leaderboard
from reports.html import render_html
from reports.paper import build_table, load_ours, load_released
from reports.released import FLAG_MIOU, format_three_column, three_column_view
from runners.records import load_records
from tests.reports.conftest import write_fake_run

CKPT = "rein-dinov2-gta5"


def _set(path: Path, *, profile: str, released: bool = False) -> dict:
    record = json.loads(path.read_text())
    record["profile"] = record["spec"]["profile"] = profile
    if released:
        record["released"] = {"id": CKPT, "file": "iter_40000_published.pth", "sha256_published": None,
                              "reported_lines": [23, 24]}
    path.write_text(json.dumps(record))
    return record


def _fixture(tmp_path: Path):
    rein = get_protocol("gta2cbm", variant="rein")
    root = tmp_path / "runs"
    ours = [_set(write_fake_run(root / "ours", "rein", "dinov2_vitl14", seed=s, quality=0.80 + 0.02 * s,
                                protocol=rein), profile="released") for s in (0, 1)]
    rel = _set(write_fake_run(root / "rel", "rein", "dinov2_vitl14", quality=0.86, protocol=rein, run_suffix="-rel"),
               profile="released", released=True)
    rel_h = _set(write_fake_run(root / "rel", "rein", "dinov2_vitl14", quality=0.75, run_suffix="-relh"),
                 profile="harmonised", released=True)
    csv_path = tmp_path / "leaderboard.csv"
    rows = merge_into_csv(csv_path, load_records(root), AggregateOptions(resamples=0))
    write_leaderboard(csv_path, rows)
    return rows, csv_path, ours, rel, rel_h


def _row(rows, kind, variant, target):
    return next(r for r in rows if r["kind"] == kind and r["variant"] == variant and r["target"] == target)


def test_released_rows_compare_with_the_number_the_release_names(tmp_path):
    rows, csv_path, ours, rel, _ = _fixture(tmp_path)
    city = _row(rows, "released", "rein", "Cityscapes")
    assert (city["checkpoint"], city["profile"], city["n_seeds"]) == (CKPT, "released", "1")
    assert city["miou_mean"] == f"{rel['results']['targets']['cityscapes']['miou']:.2f}"
    # the release's own number (Rein README, reported.csv line 23), not the paper's 66.40 (tqdmT1)
    assert (city["reported_miou"], city["reported_ref"]) == ("66.7", "ReinRD")
    assert abs(float(city["delta_vs_reported"]) - (float(city["miou_mean"]) - 66.7)) < 0.006
    assert _row(rows, "released", "rein", "BDD100K")["reported_miou"] == "60.0"
    assert _row(rows, "released", "rein", "Mapillary")["reported_miou"] == ""  # the release names no M number
    retrained = _row(rows, "reproduced", "rein", "Cityscapes")
    assert (retrained["reported_miou"], retrained["checkpoint"], retrained["n_seeds"]) == ("66.40", "", "2")
    # profiles are never ranked together; the released row has its own ledger, merged idempotently
    assert city["rank_group"].endswith("|released")
    assert _row(rows, "released", "default", "Cityscapes")["rank_group"].endswith("|Cityscapes")
    again = merge_into_csv(csv_path, [], AggregateOptions(resamples=0))
    assert render_csv(again) == render_csv(rows)


def test_three_column_view_puts_published_released_and_retrained_side_by_side(tmp_path):
    rows, csv_path, ours, rel, rel_h = _fixture(tmp_path)
    view = three_column_view(rows)
    assert {(v.variant, v.profile) for v in view} == {("rein", "released"), ("default", "harmonised")}
    v = next(v for v in view if v.variant == "rein" and v.target == "Cityscapes")
    seeds = [r["results"]["targets"]["cityscapes"]["miou"] for r in ours]
    released_value = round(rel["results"]["targets"]["cityscapes"]["miou"], 2)
    assert (v.published, v.published_ref) == (66.7, "ReinRD")
    assert v.released == released_value
    assert v.retrained == round(statistics.fmean(seeds), 2)
    assert v.retrained_std == round(statistics.stdev(seeds), 2) and v.retrained_seeds == 2
    expected = (round(released_value - 66.7, 2), round(round(statistics.fmean(seeds), 2) - 66.7, 2),
                round(round(statistics.fmean(seeds), 2) - released_value, 2))
    assert v.deltas() == expected
    assert v.flagged == any(abs(d) > 1.0 for d in expected)
    h = next(v for v in view if v.variant == "default" and v.target == "Cityscapes")
    assert h.retrained is None and h.released == round(rel_h["results"]["targets"]["cityscapes"]["miou"], 2)
    assert h.flagged == (abs(h.released - 66.7) > 1.0)
    # a released value 1.0 away is not flagged, 1.01 is
    from dataclasses import replace

    assert not replace(h, released=67.7, retrained=None).flagged and replace(h, released=67.71).flagged
    text = format_three_column(view, "md")
    assert f"| {CKPT} | gta2cbm [rein, released] | Cityscapes | 66.70 [ReinRD] | {released_value:.2f} |" in text
    assert f"flagged (|Δ| > {FLAG_MIOU:g} mIoU)" in text


def test_html_and_paper_tables_show_the_released_checkpoint(tmp_path):
    rows, csv_path, ours, rel, _ = _fixture(tmp_path)
    html = render_html(rows)
    assert 'id="released-table"' in html and f"Rein (released {CKPT})" in html
    view = three_column_view(rows)
    assert html.count('<span class="badge nc">|Δ| &gt; 1</span></td>') == sum(v.flagged for v in view) > 0

    table = build_table("rein-readme", ours=load_ours(csv_path), released=load_released(csv_path))
    cell = table.cell("DINOv2-L", table.spec.columns[0].label)
    assert cell.text == "66.7"
    released_value = rel["results"]["targets"]["cityscapes"]["miou"]
    delta = float(f"{released_value:.2f}") - 66.7
    flag = " [|Δ|>1]" if abs(delta) > 1.0 else ""
    assert cell.ours.startswith(f"released {released_value:.2f} (Δ {delta:+.2f}{flag}) [rein, {CKPT}]; ours ")
