"""reports.html: the static leaderboard page, checked statically and in real headless Chromium."""

import re

import pytest

from reports.aggregate import read_leaderboard
from reports.html import chromium_selftest, find_chromium, main, parse_leaderboard_dom, render_html, write_html


def _csv_index(csv_path):
    return {(r["protocol_hash"], r["method_id"], r["backbone_id"], r["config_hash"], r["pretrained"], r["target"]): r
            for r in read_leaderboard(csv_path) if r["kind"] == "reproduced"}


def assert_numbers_match_csv(html, csv_path):
    """Every number shown in the leaderboard tables equals leaderboard.csv; every published row is listed."""
    index = _csv_index(csv_path)
    tables = parse_leaderboard_dom(html)
    lbs = [t for t in tables if "lb" in t["attrs"].get("class", "")]
    seen = set()
    for t in lbs:
        for row in t["rows"]:
            a = row["attrs"]
            for cell in row["cells"]:
                col = cell["attrs"].get("data-col")
                if not col:
                    continue
                target, what = col.rsplit("|", 1)
                key = (t["attrs"]["data-hash"], a["data-method-id"], a["data-backbone-id"], a["data-config"],
                       a["data-pretrained"], target)
                r = index.get(key)
                value = cell["attrs"]["data-value"]
                if r is None:
                    assert value == "", key
                    continue
                seen.add(key)
                csv_value = {"miou": r["miou_mean"], "rpd": r["rpd_mean"], "delta": r["delta_vs_reported"]}[what]
                assert value == csv_value, (key, what)
                if what == "miou":
                    assert cell["text"].startswith(r["miou_mean"])
                    if r["miou_std"]:
                        assert f"±{r['miou_std']}" in cell["text"]
                    if r["miou_ci_low"]:
                        assert f"[{r['miou_ci_low']}, {r['miou_ci_high']}]" in cell["text"]
                if what == "delta" and value:
                    assert cell["attrs"]["data-paper"] == r["reported_miou"]
    assert seen == set(index), "every reproduced row of the CSV is shown"
    published = next(t for t in tables if t["attrs"].get("id") == "published-table")
    shown = sorted((c["cells"][0]["text"], c["cells"][3]["text"], c["cells"][4]["text"]) for c in published["rows"])
    expected = sorted((r["method"], r["target"], r["reported_miou"]) for r in read_leaderboard(csv_path)
                      if r["kind"] == "reported")
    assert shown == expected
    return lbs


def test_page_is_self_contained_and_shows_the_csv(fixture_csv, tmp_path):
    html = render_html(read_leaderboard(fixture_csv))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "no network resources"
    assert "<link" not in html and "@import" not in html
    assert "not comparable with 1 other table(s)" in html and "inference.flip: False vs True" in html
    assert "MINIATURE benchmark" in html and "Per-class IoU".lower() in html.lower()
    assert_numbers_match_csv(html, fixture_csv)
    out = write_html(fixture_csv, tmp_path / "site" / "index.html")
    assert out.read_text() == html
    assert main(["--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.html")]) == 2


def test_leaderboard_in_headless_chromium(fixture_csv, tmp_path):
    if not find_chromium():
        pytest.skip("chromium is not installed (apt-get install -y chromium; CI installs it)")
    page = write_html(fixture_csv, tmp_path / "leaderboard.html")
    result = chromium_selftest(page)
    failed = [c for c in result.checks if not c["ok"]]
    assert result.status == "pass", (failed, result.page_errors)
    assert result.page_errors == [] and result.console == [], "no console output or errors"
    assert len(result.checks) > 50 and any(c["name"].startswith("drill-down") for c in result.checks)
    # the DOM after the self-test: each leaderboard was left sorted by its Avg. mIoU, best first
    lbs = assert_numbers_match_csv(result.dom, fixture_csv)
    for t in lbs:
        final = re.search(rf'id="{t["attrs"]["id"]}"[^>]*data-final-sort="([^"]+)"', result.dom)
        assert final, t["attrs"]["id"]
        values = [float(c["attrs"]["data-value"]) for row in t["rows"] for c in row["cells"]
                  if c["attrs"].get("data-col") == final.group(1)]
        assert values == sorted(values, reverse=True)
    assert 'data-open="pc-' in result.dom  # a drill-down panel is open with its per-class table


def test_average_column_names_targets_that_share_an_initial(tmp_path, write_run):
    from benchmarks.protocols import get_protocol
    from reports.aggregate import AggregateOptions, merge_into_csv
    from reports.reported import avg_label
    from runners.records import load_records

    assert avg_label(["Cityscapes", "BDD100K", "Mapillary"]) == "Avg(C/B/M)"  # the papers' header, kept
    assert avg_label(["BDD100K", "Mapillary", "acdc"]) == "Avg(B/M/A)"
    write_run(tmp_path / "runs", "rein", "dinov2_vitl14", protocol=get_protocol("city2acdc"))
    rows = merge_into_csv(tmp_path / "lb.csv", load_records(tmp_path / "runs"), AggregateOptions(resamples=0))
    html = render_html(rows)
    assert "Avg(acdc-fog/night/rain/snow)" in html and "A/A/A/A" not in html
