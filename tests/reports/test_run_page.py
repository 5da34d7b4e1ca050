"""reports.run: the per-run page (numbers equal the record, images load in headless Chromium), and the
leaderboard's links to run pages and galleries."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from datasets.labels import CITYSCAPES_CLASSES
from reports.gallery import load_runs, main as gallery_main
from reports.html import chromium_selftest, find_chromium, write_html
from reports.run import main as run_page_main, write_run_page


class _Cells(HTMLParser):
    """Attributes of every element carrying ``data-value``, with its table/row context."""

    def __init__(self):
        super().__init__()
        self.cells, self.stack, self.imgs, self.links = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag in ("table", "tr", "dl"):
            self.stack.append((tag, a))
        if tag == "img":
            self.imgs.append(a)
        if tag == "a":
            self.links.append(a)
        if "data-value" in a:
            ctx = {t: dict(x) for t, x in self.stack}
            self.cells.append({"tag": tag, "attrs": a, "table": ctx.get("table", ctx.get("dl", {})),
                               "row": ctx.get("tr", {})})

    def handle_endtag(self, tag):
        if tag in ("table", "tr", "dl") and self.stack:
            self.stack.pop()


def parse(html):
    p = _Cells()
    p.feed(html)
    return p


def assert_page_matches_record(html, run_dir):
    """Scores, per-class IoU and every confusion share on the page equal the record and its confusion files."""
    record = json.loads((run_dir / "result.json").read_text())
    res = record["results"]
    page = parse(html)
    scores = {(c["row"]["data-key"], c["attrs"]["data-what"]): c["attrs"]["data-value"]
              for c in page.cells if c["table"].get("id") == "scores-table"}
    for key, t in res["targets"].items():
        assert scores[(key, "miou")] == f"{t['miou']:.2f}" and scores[(key, "rpd")] == f"{res['rpd'][key]:.1f}"
    assert scores[("__mean__", "miou")] == f"{res['mean_miou']:.2f}"
    assert scores[(res["reference"]["key"], "miou")] == f"{res['reference']['miou']:.2f}"
    per_class = {(c["row"]["data-class"], c["attrs"]["data-key"]): c["attrs"]["data-value"]
                 for c in page.cells if c["table"].get("id") == "per-class-table"}
    splits = {**res["targets"], res["reference"]["key"]: res["reference"]}
    assert len(per_class) == 19 * len(splits)
    for key, t in splits.items():
        for cls in CITYSCAPES_CLASSES:
            assert per_class[(cls, key)] == f"{t['per_class_iou'][cls]:.2f}"
        # confusion heatmap: share of the row's pixels, from the per-image confusions summed (written out)
        with np.load(run_dir / t["confusion"]) as z:
            total = z["confusion"].sum(0)
        cells = [c for c in page.cells if c["table"].get("id") == f"cm-{key}"]
        assert len(cells) == 19 * 19
        for c in cells:
            i = CITYSCAPES_CLASSES.index(c["row"]["data-class"])
            j = cells.index(c) % 19
            assert int(c["attrs"]["data-count"]) == total[i, j]
            expected = f"{100 * total[i, j] / total[i].sum():.1f}" if total[i].sum() else ""
            assert c["attrs"]["data-value"] == expected
    return page


def test_run_page_shows_the_record(artifact_runs, tmp_path):
    run = load_runs([next(artifact_runs.rglob("rein-*/result.json")).parent])[0]
    html = write_run_page(run).read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "no network resources"
    page = assert_page_matches_record(html, run.folder)
    # curves + 3 targets x 2 gallery images x (image, ground truth, prediction), all inline
    assert len(page.imgs) == 1 + 3 * 2 * 3 and all(i["src"].startswith("data:image/") for i in page.imgs)
    timings = {c["attrs"]["data-value"] for c in page.cells if c["table"].get("id") == "timings"}
    assert f"{run.record['timings']['total_s']:.1f}" in timings
    assert run_page_main([str(tmp_path / "nope")]) == 2
    assert run_page_main([str(artifact_runs), "--out", str(tmp_path / "x.html")]) == 2  # several runs, one --out


def test_leaderboard_links_run_pages_and_galleries(artifact_runs, tmp_path):
    from reports.aggregate import AggregateOptions, merge_into_csv, write_leaderboard
    from runners.records import load_records

    csv_path = tmp_path / "leaderboard.csv"
    write_leaderboard(csv_path, merge_into_csv(csv_path, load_records(artifact_runs), AggregateOptions(resamples=0)))
    site = tmp_path / "site"
    assert run_page_main([str(artifact_runs)]) == 0
    assert gallery_main([str(artifact_runs / "real"), "--out", str(site / "gallery")]) == 0
    page = write_html(csv_path, site / "leaderboard.html")
    links = parse(page.read_text()).links
    run_links = {(site / a["href"]).resolve() for a in links if a.get("class") == "run-link"}
    assert run_links == {p.parent.resolve() / "report.html" for p in artifact_runs.rglob("result.json")}
    galleries = [(site / a["href"]) for a in links if a.get("class") == "gallery-link"]
    assert len(galleries) == 3 and all(g.is_file() for g in galleries)  # gta2cbm: C, B, M (city2bm has none)
    assert {g.name.rsplit("_", 1)[1] for g in galleries} == {"cityscapes.png", "bdd100k.png", "mapillary.png"}
    if find_chromium():  # the linked page still passes its own self-test
        result = chromium_selftest(page)
        assert result.ok, ([c for c in result.checks if not c["ok"]], result.page_errors, result.console)


def test_run_page_in_headless_chromium(artifact_runs):
    if not find_chromium():
        pytest.skip("chromium is not installed (apt-get install -y chromium; CI installs it)")
    run_dir = next(artifact_runs.rglob("tqdm-*/result.json")).parent
    page = write_run_page(load_runs([run_dir])[0])
    result = chromium_selftest(page)
    failed = [c for c in result.checks if not c["ok"]]
    assert result.status == "pass", (failed, result.page_errors)
    assert result.page_errors == [] and result.console == [], "no console output or errors"
    loaded = [c for c in result.checks if c["name"].startswith("image loads")]
    assert len(loaded) == 19 and all(c["ok"] for c in loaded)
    assert_page_matches_record(result.dom, run_dir)  # the DOM Chromium built shows the record's numbers
