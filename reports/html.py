"""Static HTML leaderboard from leaderboard.csv: ``python -m reports.html [--csv leaderboard.csv] [--out PATH]``.

One self-contained page (inline CSS and JS, no network, no CDN), rendered with Jinja2 from
``reports/templates/leaderboard.html.j2``. Per benchmark (real data first, the miniature benchmark in its
own section) and protocol, each protocol hash gets its own table of methods x targets: mean mIoU ± std over
seeds with the bootstrap CI, rPD, the delta to the paper's number, trainable parameters and GPU-hours.
Tables of the same protocol name with different hashes are shown side by side, each marked "not
comparable" with the settings that differ; ranks are only computed within a table. Columns sort on click,
rows filter by text, a row's ▸ opens its per-class IoU and provenance, and cells carry their provenance as
a tooltip. All published numbers follow in a sortable, filterable table.

``python -m reports.html --selftest`` renders the page, opens it in headless Chromium with the page's
built-in self-test (``#selftest``: sorts, filters and opens a drill-down, records console errors) and
reports the result; :func:`chromium_selftest` does the same for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from reports.aggregate import comparability_groups, describe_diff, read_leaderboard
from reports.released import FLAG_MIOU, HEADER as RELEASED_HEADER, table_rows, three_column_view
from reports.reported import avg_label, dataset_display

__all__ = ["build_context", "render_html", "write_html", "find_chromium", "chromium_selftest", "SelfTestResult",
           "parse_leaderboard_dom", "print_selftest", "add_links", "main"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "leaderboard.html.j2"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# ---------------------------------------------------------------------------------------------- context
def _fnum(s: str) -> float | None:
    return float(s) if s not in ("", None) else None


def _params(s: str) -> str:
    if not s:
        return ""
    n = int(s)
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def _heat(v: float | None) -> str:
    if v is None:
        return ""
    v = max(0.0, min(100.0, v))
    return f"background:hsl({int(1.2 * v)},65%,{88 - 0.2 * v:.0f}%)"


def _cell(row: dict[str, str] | None) -> dict[str, Any]:
    """What one (method, target) block of a table shows."""
    if row is None:
        return {"present": False}
    ci = f"{row['ci_level']}% CI [{row['miou_ci_low']}, {row['miou_ci_high']}] (image bootstrap, " \
         f"{row['ci_resamples']} resamples)" if row.get("miou_ci_low") else "no CI (per-image confusions not available)"
    tip = (f"{row['method']} / {row['backbone']} on {row['target']}: mean of {row['n_seeds']} seed(s) "
           f"[{row['seeds']}] = {row['miou_mean']}" + (f" ± {row['miou_std']} (std)" if row["miou_std"] else "")
           + f"; {ci}; runs: {row['run_ids'].replace(';', ', ')}")
    paper_tip = (f"paper {row['reported_miou']} [{row['reported_ref']}]: {row['reported_source']}"
                 + (f"; other published values: {row['reported_alternatives']}" if row["reported_alternatives"] else "")
                 if row["reported_miou"] else "no published number for this cell")
    return {
        "present": True, "miou": row["miou_mean"], "std": row["miou_std"], "ci_low": row["miou_ci_low"],
        "ci_high": row["miou_ci_high"], "rpd": row["rpd_mean"], "rpd_std": row["rpd_std"],
        "source_miou": row["source_miou"], "paper": row["reported_miou"], "paper_ref": row["reported_ref"],
        "delta": row["delta_vs_reported"], "rank": row["rank"], "tip": tip,
        "rpd_tip": f"rPD = 100 x {row['target']} mIoU / source mIoU ({row['source_miou']}); relative drop = 100 - rPD",
        "paper_tip": paper_tip,
    }


def _group_model(group, index: int) -> dict[str, Any]:
    settings = group.settings or {}
    targets = [dataset_display(t["key"]) for t in settings.get("targets", [])]
    if not targets:
        targets = list(dict.fromkeys(r["target"] for r in group.rows if not r["target"].startswith("Avg(")))
    avg = avg_label(targets)
    columns = targets + [avg]
    by_entry: dict[tuple, dict[str, dict[str, str]]] = {}
    for r in group.rows:
        method = r["method"] + (f" (released {r['checkpoint']})" if r.get("kind") == "released" else "")
        by_entry.setdefault((method, r["backbone"], r["config_hash"], r["pretrained"]), {})[r["target"]] = r
    configs: dict[tuple, set] = {}
    for m, b, c, p in by_entry:
        configs.setdefault((m, b, p), set()).add(c)
    entries = []
    for k, ((method, backbone, config, pretrained), cells) in enumerate(sorted(by_entry.items())):
        any_row = next(iter(cells.values()))
        avg_row = cells.get(avg)
        per_class_targets = [t for t in targets if t in cells and cells[t]["per_class_iou"]]
        per_class = {t: json.loads(cells[t]["per_class_iou"]) for t in per_class_targets}
        classes = list(dict.fromkeys(c for t in per_class_targets for c in per_class[t]))
        eid = f"g{index}r{k}"
        entries.append({
            "id": eid, "method": method, "backbone": backbone, "config": config, "pretrained": pretrained,
            "show_config": len(configs[(method, backbone, pretrained)]) > 1,
            "method_id": any_row["method_id"], "backbone_id": any_row["backbone_id"],
            "n_seeds": (avg_row or any_row)["n_seeds"], "seeds": (avg_row or any_row)["seeds"],
            "cells": {t: _cell(cells.get(t)) for t in columns},
            "trainable": any_row["trainable_params"], "trainable_text": _params(any_row["trainable_params"]),
            "gpu_hours": any_row["gpu_hours"],
            "rank": (avg_row or {}).get("rank", ""),
            "runs": sorted({e["run_id"]: {"run_id": e["run_id"], "seed": e.get("seed"), "path": e.get("path", ""),
                                          "href": ""}
                            for t in cells.values() for e in json.loads(t["seed_values"] or "[]")}.values(),
                           key=lambda r: (str(r["seed"]), r["run_id"])),
            "per_class": {"targets": per_class_targets, "rows": [
                {"name": c, "values": [{"v": per_class[t].get(c), "style": _heat(per_class[t].get(c))}
                                       for t in per_class_targets]} for c in classes]},
            "provenance": {
                "run_ids": any_row["run_ids"].split(";") if any_row["run_ids"] else [],
                "records": sorted({e.get("path", "") for t in cells.values()
                                   for e in json.loads(t["seed_values"] or "[]")}),
                "commits": any_row["code_commits"], "config_hash": config, "protocol_hash": group.protocol_hash,
                "reported": [(t, cells[t]["reported_miou"], cells[t]["reported_source"]) for t in columns
                             if t in cells and cells[t]["reported_miou"]],
            },
        })
    entries.sort(key=lambda e: (int(e["rank"]) if e["rank"] else 10**9, e["method"], e["backbone"], e["config"]))
    return {
        "id": f"g{index}", "benchmark": group.benchmark, "protocol": group.protocol, "variant": group.variant,
        "hash": group.protocol_hash, "label": group.label, "targets": targets, "avg": avg, "columns": columns,
        "description": settings.get("description", ""), "entries": entries,
        "not_comparable": [{"label": lbl, "diff": describe_diff(d)} for lbl, d in group.not_comparable_with.items()],
        "show_paper": group.benchmark == "real",
        "target_keys": [t["key"] for t in settings.get("targets", [])], "galleries": [],
    }


def build_context(rows: Sequence[dict[str, str]], *, source: str = "leaderboard.csv") -> dict[str, Any]:
    """Everything the template shows, from leaderboard.csv rows."""
    groups = comparability_groups(rows)
    sections: list[dict[str, Any]] = []
    for bench in ("real", "miniature"):
        protocols: dict[str, list[dict[str, Any]]] = {}
        for i, g in enumerate(groups):
            if g.benchmark == bench:
                protocols.setdefault(g.protocol, []).append(_group_model(g, i))
        if protocols:
            sections.append({"benchmark": bench,
                             "protocols": [{"name": n, "groups": gs} for n, gs in protocols.items()]})
    published = [r for r in rows if r["kind"] == "reported"]
    return {
        "title": "DGSS leaderboard",
        "source": source,
        "sections": sections,
        "published": published,
        "n_reproduced": sum(r["kind"] == "reproduced" for r in rows),
        "n_published": len(published),
        "released_view": {"header": RELEASED_HEADER, "rows": table_rows(three_column_view(rows)),
                          "flag": f"{FLAG_MIOU:g}"},
    }


def add_links(context: dict[str, Any], *, csv_dir: Path, page_dir: Path, gallery_dir: Path | None) -> None:
    """Link each row's runs to their pages (``reports.run``: ``<run>/report.html``, found through the record
    paths, relative to the CSV) and each table to its gallery PNGs (``reports.gallery``), where they exist."""
    from reports.gallery import gallery_filename
    from reports.run import PAGE_NAME

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix()

    for section in context["sections"]:
        for protocol in section["protocols"]:
            for g in protocol["groups"]:
                for e in g["entries"]:
                    for r in e["runs"]:
                        page = csv_dir / Path(r["path"]).parent / PAGE_NAME if r["path"] else None
                        r["href"] = rel(page) if page is not None and page.is_file() else ""
                for key in g["target_keys"] if gallery_dir else []:
                    png = gallery_dir / gallery_filename(g["protocol"], g["variant"], g["hash"], key)
                    if png.is_file():
                        g["galleries"].append({"target": dataset_display(key), "href": rel(png)})


def render_html(rows: Sequence[dict[str, str]], *, source: str = "leaderboard.csv",
                links: dict[str, Path | None] | None = None) -> str:
    """The page; ``links`` (``csv_dir``, ``page_dir``, ``gallery_dir``: see :func:`add_links`) adds the links
    to run pages and galleries."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    context = build_context(rows, source=source)
    if links:
        add_links(context, **links)
    return env.get_template(TEMPLATE).render(**context)


def write_html(csv_path: Path | str, out: Path | str, *, gallery_dir: Path | str | None = None) -> Path:
    """Render the leaderboard of ``csv_path`` to ``out`` (one self-contained file), linking the run pages
    that exist and the galleries in ``gallery_dir`` (default: ``gallery/`` next to ``out``)."""
    csv_path, out = Path(csv_path), Path(out)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found; build it with python -m reports.aggregate [RUNS]")
    out.parent.mkdir(parents=True, exist_ok=True)
    links = {"csv_dir": csv_path.parent, "page_dir": out.parent,
             "gallery_dir": Path(gallery_dir) if gallery_dir else out.parent / "gallery"}
    out.write_text(render_html(read_leaderboard(csv_path), source=csv_path.name, links=links), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------- chromium
def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($DGSS_CHROMIUM first), or None."""
    env = os.environ.get("DGSS_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class SelfTestResult:
    """Outcome of loading the page in headless Chromium with ``#selftest``."""

    status: str  # "pass" | "fail" | "missing" (the self-test never wrote its result)
    checks: list[dict[str, Any]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # captured in the page (errors, console.error/warn)
    console: list[str] = field(default_factory=list)  # Chromium's CONSOLE log lines (any console output)
    dom: str = ""
    returncode: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "pass" and not self.page_errors and not self.console and self.returncode == 0


def chromium_selftest(html_path: Path | str, *, chromium: str | None = None, timeout: float = 90.0) -> SelfTestResult:
    """Open ``html_path#selftest`` in headless Chromium, dump the DOM after the page's self-test ran.

    Console output of the page is read from Chromium's log (``--enable-logging=stderr``: every console
    message and uncaught error is logged as a ``CONSOLE`` line); the page itself records errors and
    ``console.error``/``console.warn`` calls into the self-test result. The page makes no network requests;
    host resolution is disabled anyway.
    """
    chromium = chromium or find_chromium()
    if not chromium:
        raise FileNotFoundError("no Chromium found (install Debian's: apt-get install -y chromium, "
                                "or set DGSS_CHROMIUM)")
    url = Path(html_path).resolve().as_uri() + "#selftest"
    with tempfile.TemporaryDirectory(prefix="dgss-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=15000", "--dump-dom", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    parser = _SelfTestParser()
    parser.feed(proc.stdout)
    if parser.payload is None:
        return SelfTestResult("missing", console=console, dom=proc.stdout, returncode=proc.returncode,
                              page_errors=[f"self-test wrote no result; chromium stderr tail: {proc.stderr[-2000:]}"])
    data = json.loads(parser.payload)
    return SelfTestResult(data.get("status", "fail"), data.get("checks", []), data.get("errors", []), console,
                          proc.stdout, proc.returncode)


def print_selftest(result: SelfTestResult) -> bool:
    """Print each check and error of a self-test; returns whether it passed."""
    for c in result.checks:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']} {c.get('detail', '')}")
    for e in result.page_errors + result.console:
        print(f"  error: {e}")
    print(f"self-test: {'pass' if result.ok else 'FAIL'}")
    return result.ok


class _SelfTestParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.payload: str | None = None
        self._in = False
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre" and dict(attrs).get("id") == "selftest":
            self._in = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self._in:
            self._in = False
            self.payload = "".join(self._buf)

    def handle_data(self, data: str) -> None:
        if self._in:
            self._buf.append(data)


class _TableParser(HTMLParser):
    """Rows of every ``table.lb`` (leaderboards) and ``table#published-table`` in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self._table: dict[str, Any] | None = None
        self._row: dict[str, Any] | None = None
        self._cell: dict[str, Any] | None = None
        self._in_tbody = False

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {k: v or "" for k, v in attrs_list}
        if tag == "table" and ("lb" in attrs.get("class", "").split() or attrs.get("id") == "published-table"):
            self._table = {"attrs": attrs, "rows": []}
            self.tables.append(self._table)
        elif self._table is not None and tag == "tbody":
            self._in_tbody = True
        elif self._table is not None and self._in_tbody and tag == "tr":
            self._row = {"attrs": attrs, "cells": []}
            self._table["rows"].append(self._row)
        elif self._row is not None and tag == "td":
            self._cell = {"attrs": attrs, "text": ""}
            self._row["cells"].append(self._cell)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data


def parse_leaderboard_dom(html: str) -> list[dict[str, Any]]:
    """The leaderboard tables of a page (or a dumped DOM): ``[{"attrs", "rows": [{"attrs", "cells": [...]}]}]``."""
    p = _TableParser()
    p.feed(html)
    return p.tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.html", description="Render the static HTML leaderboard.")
    parser.add_argument("--csv", default="leaderboard.csv", help="leaderboard CSV (default: %(default)s)")
    parser.add_argument("--out", default="outputs/report/leaderboard.html", help="output page (default: %(default)s)")
    parser.add_argument("--gallery", default=None,
                        help="folder of python -m reports.gallery figures to link (default: gallery/ next to --out)")
    parser.add_argument("--selftest", action="store_true",
                        help="also open the page in headless Chromium and run its built-in self-test")
    args = parser.parse_args(argv)
    try:
        out = write_html(args.csv, args.out, gallery_dir=args.gallery)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    if args.selftest:
        return 0 if print_selftest(chromium_selftest(out)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
