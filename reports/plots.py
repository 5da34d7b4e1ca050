"""Figures from leaderboard.csv (PNG + SVG, Agg backend): ``python -m reports.plots [--csv CSV] [--out DIR]``.

- ``heatmap_<group>_<target>``: per-class IoU, methods x the 19 classes, one figure per target and
  comparability group (benchmark, protocol, variant, protocol hash).
- ``reported_vs_reproduced``: published mIoU (x) vs ours (y, ± std over seeds) for every real-data cell that
  has a published number, with the identity line; colour = method/backbone, marker = target.
- ``rpd_<group>``: rPD bars per method and target (error bars: std over seeds).
- ``cost_<group>``: Avg. mIoU vs trainable parameters and vs GPU-hours per run.

Miniature-benchmark figures are produced separately and say so in their titles; they never share a figure
with real-data numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reports.aggregate import ComparabilityGroup, comparability_groups, read_leaderboard  # noqa: E402
from reports.reported import avg_label, dataset_display  # noqa: E402

__all__ = ["make_plots", "plot_heatmaps", "plot_reported_vs_reproduced", "plot_rpd_bars", "plot_cost", "main"]

FORMATS = ("png", "svg")
_RC = {"svg.hashsalt": "dgss-reports", "svg.fonttype": "none", "figure.dpi": 100, "savefig.dpi": 110,
       "axes.spines.top": False, "axes.spines.right": False}


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", "_".join(p for p in parts if p)).strip("-")


def _group_slug(g: ComparabilityGroup) -> str:
    return _slug(g.benchmark, g.protocol, g.variant, g.protocol_hash[:8])


def _group_title(g: ComparabilityGroup) -> str:
    bench = "MINIATURE benchmark (not comparable with papers)" if g.benchmark == "miniature" else "real data"
    return f"{g.protocol} [{g.variant}] {g.protocol_hash} — {bench}"


def _entry_label(r: dict[str, str], multi_config: bool = False) -> str:
    label = f"{r['method']} ({r['backbone']})"
    if r.get("pretrained") == "false":
        label += " [random init]"
    return label + (f" cfg {r['config_hash']}" if multi_config else "")


def _save(fig, out_dir: Path, name: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for ext in formats:
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _targets(g: ComparabilityGroup) -> list[str]:
    settings = g.settings or {}
    names = [dataset_display(t["key"]) for t in settings.get("targets", [])]
    return names or sorted({r["target"] for r in g.rows if not r["target"].startswith("Avg(")})


def _entries(g: ComparabilityGroup) -> dict[tuple, dict[str, dict[str, str]]]:
    out: dict[tuple, dict[str, dict[str, str]]] = {}
    for r in g.rows:
        out.setdefault((r["method"], r["backbone"], r["config_hash"], r["pretrained"]), {})[r["target"]] = r
    return dict(sorted(out.items()))


def _labels(entries: dict[tuple, dict]) -> dict[tuple, str]:
    counts: dict[tuple, int] = {}
    for m, b, _, p in entries:
        counts[(m, b, p)] = counts.get((m, b, p), 0) + 1
    return {k: _entry_label(next(iter(v.values())), counts[(k[0], k[1], k[3])] > 1) for k, v in entries.items()}


def plot_heatmaps(groups: Sequence[ComparabilityGroup], out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Per-class IoU heatmaps (methods x classes), one per group and target."""
    import seaborn as sns

    paths: list[Path] = []
    for g in groups:
        entries = _entries(g)
        labels = _labels(entries)
        for target in _targets(g):
            rows = {labels[k]: json.loads(v[target]["per_class_iou"]) for k, v in entries.items()
                    if target in v and v[target]["per_class_iou"]}
            if not rows:
                continue
            classes = list(dict.fromkeys(c for pc in rows.values() for c in pc))
            data = np.array([[np.nan if pc.get(c) is None else pc[c] for c in classes] for pc in rows.values()],
                            dtype=float)
            with plt.rc_context(_RC):
                fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(classes) + 3), 1.2 + 0.5 * len(rows)))
                sns.heatmap(data, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=len(rows) <= 12, fmt=".0f",
                            annot_kws={"fontsize": 7}, xticklabels=classes, yticklabels=list(rows),
                            cbar_kws={"label": "IoU (%)"}, linewidths=0.3, linecolor="white", mask=np.isnan(data))
                ax.set_title(f"Per-class IoU on {target}\n{_group_title(g)}", fontsize=10)
                ax.tick_params(axis="x", labelrotation=60, labelsize=8)
                ax.tick_params(axis="y", labelrotation=0, labelsize=8)
                paths += _save(fig, out_dir, f"heatmap_{_group_slug(g)}_{_slug(target)}", formats)
    return paths


def plot_reported_vs_reproduced(rows: Sequence[dict[str, str]], out_dir: Path,
                                formats: Sequence[str] = FORMATS) -> list[Path]:
    """Published vs reproduced mIoU (real data only), identity line, ± std error bars."""
    pts = [r for r in rows if r["kind"] == "reproduced" and r["benchmark"] == "real" and r["reported_miou"]
           and r["miou_mean"] and not r["target"].startswith("Avg(")]
    if not pts:
        return []
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    targets = list(dict.fromkeys(r["target"] for r in pts))
    series = list(dict.fromkeys((r["method"], r["backbone"], r["variant"]) for r in pts))
    colors = plt.get_cmap("tab10")
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7.5, 6.5))
        xs = [float(r["reported_miou"]) for r in pts]
        ys = [float(r["miou_mean"]) for r in pts]
        lo, hi = min(xs + ys) - 3, max(xs + ys) + 3
        ax.plot([lo, hi], [lo, hi], color="0.45", lw=1, ls="--", label="identity (ours = paper)", zorder=1)
        for r, x, y in zip(pts, xs, ys):
            i = series.index((r["method"], r["backbone"], r["variant"]))
            ax.errorbar(x, y, yerr=float(r["miou_std"]) if r["miou_std"] else None,
                        fmt=markers[targets.index(r["target"]) % 8], color=colors(i % 10), ms=7, capsize=3,
                        mec="black", mew=0.5, zorder=3)
        for i, (m, b, v) in enumerate(series):
            ax.plot([], [], "o", color=colors(i % 10), label=f"{m} ({b}) [{v}]")
        for j, t in enumerate(targets):
            ax.plot([], [], markers[j % 8], color="0.6", mec="black", mew=0.5, label=t)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("published mIoU (%)")
        ax.set_ylabel("reproduced mIoU (%), mean ± std over seeds")
        ax.set_title("Reported vs reproduced (real data; each paper used its own protocol)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        return _save(fig, out_dir, "reported_vs_reproduced", formats)


def plot_rpd_bars(groups: Sequence[ComparabilityGroup], out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """rPD per method (groups of bars) and target (bars), one figure per comparability group."""
    paths: list[Path] = []
    for g in groups:
        entries = _entries(g)
        labels = _labels(entries)
        targets = _targets(g)
        cols = targets + [avg_label(targets)]
        if not any(v.get(t, {}).get("rpd_mean") for v in entries.values() for t in cols):
            continue
        width = 0.8 / len(cols)
        colors = plt.get_cmap("Set2")
        with plt.rc_context(_RC):
            fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(entries) + 2), 4.2))
            x = np.arange(len(entries))
            for j, t in enumerate(cols):
                vals = [float(v[t]["rpd_mean"]) if t in v and v[t]["rpd_mean"] else np.nan for v in entries.values()]
                errs = [float(v[t]["rpd_std"]) if t in v and v[t]["rpd_std"] else 0.0 for v in entries.values()]
                bars = ax.bar(x + (j - (len(cols) - 1) / 2) * width, vals, width, yerr=errs, capsize=2, label=t,
                              color=colors(j % 8), edgecolor="black", linewidth=0.4,
                              hatch="//" if t.startswith("Avg(") else None)
                ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=2)
            ax.set_xticks(x, [labels[k] for k in entries], rotation=15, ha="right", fontsize=8)
            ax.set_ylabel("rPD (%) = 100 × target / source mIoU")
            ax.set_ylim(0, max(105.0, ax.get_ylim()[1]))
            ax.axhline(100, color="0.4", lw=0.8, ls=":")
            ax.set_title(f"rPD per method and target\n{_group_title(g)}", fontsize=10)
            ax.legend(fontsize=8, ncol=len(cols), loc="lower center", bbox_to_anchor=(0.5, 1.12), frameon=False)
            paths += _save(fig, out_dir, f"rpd_{_group_slug(g)}", formats)
    return paths


def nice_ticks(lo: float, hi: float, *, log: bool) -> list[float]:
    """Tick positions a reader can read off for data in [lo, hi] (lo > 0 for ``log``): 1-2-5 steps per
    decade on a log axis (every 1..9 when the range holds fewer than three of them), and for a range
    within one decade, where log ticks would all be unlabelled minor ticks, a plain linear 1-2-5 grid."""
    from matplotlib.ticker import MaxNLocator

    if log and hi / lo >= 3:
        decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for mults in ((1, 2, 5), range(1, 10)):
            ticks = [m * 10.0 ** d for d in decades for m in mults]
            inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
            if len(inside) >= 3:
                return inside
        return inside
    pad = max((hi - lo) * 0.25, abs(hi) * 0.05, 1e-9)
    return [round(float(t), 12) for t in MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo - pad, hi + pad)
            if lo - pad <= t <= hi + pad]


def _tick_text(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:g}" if abs(v) >= 0.01 else f"{v:.1e}"


def set_cost_axis(ax, xs: Sequence[float], *, log: bool) -> None:
    """x axis of a cost panel: log scale when the data span at least a factor of 3, every tick labelled
    in plain numbers (no 10^k minor-tick clutter for small ranges)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = min(xs), max(xs)
    log = log and lo > 0 and hi / lo >= 3
    ticks = nice_ticks(lo, hi, log=log)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(ticks[0], lo / 1.3), max(ticks[-1], hi * 1.3))
    else:
        pad = max((hi - lo) * 0.25, abs(hi) * 0.05, 1e-9)  # as nice_ticks
        ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v)))


def plot_cost(groups: Sequence[ComparabilityGroup], out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Avg. mIoU vs trainable parameters (log scale) and vs GPU-hours per run."""
    paths: list[Path] = []
    for g in groups:
        entries = _entries(g)
        labels = _labels(entries)
        avg = avg_label(_targets(g))
        pts = [(labels[k], v[avg]) for k, v in entries.items() if avg in v and v[avg]["miou_mean"]]
        if not pts:
            continue
        has_gpu = any(r["gpu_hours"] for _, r in pts)
        colors = plt.get_cmap("tab10")
        with plt.rc_context(_RC):
            fig, axes = plt.subplots(1, 2 if has_gpu else 1, figsize=(11 if has_gpu else 6, 4.4), squeeze=False)
            panels = [("trainable_params", "trainable parameters", 1e6, "M")]
            if has_gpu:
                panels.append(("gpu_hours", "GPU-hours per run", 1.0, "h"))
            for ax, (col, name, scale, unit) in zip(axes[0], panels):
                for i, (label, r) in enumerate(pts):
                    if not r[col]:
                        continue
                    x = float(r[col]) / scale
                    y = float(r["miou_mean"])
                    ax.errorbar(x, y, yerr=float(r["miou_std"]) if r["miou_std"] else None, fmt="o", ms=8, capsize=3,
                                color=colors(i % 10), mec="black", mew=0.5, label=label)
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=7)
                xs = [float(r[col]) / scale for _, r in pts if r[col]]
                if xs:
                    set_cost_axis(ax, xs, log=col == "trainable_params")
                ax.set_xlabel(f"{name} ({unit})")
                ax.set_ylabel(f"{avg} mIoU (%)")
                ax.grid(alpha=0.3, which="both")
                ax.margins(y=0.2)
            fig.suptitle(f"Cost vs mIoU\n{_group_title(g)}", fontsize=10)
            fig.tight_layout()
            paths += _save(fig, out_dir, f"cost_{_group_slug(g)}", formats)
    return paths


def make_plots(rows: Sequence[dict[str, str]], out_dir: Path | str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Every figure for the rows of a leaderboard.csv; returns the written files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = comparability_groups(rows)
    return (plot_heatmaps(groups, out_dir, formats) + plot_reported_vs_reproduced(rows, out_dir, formats)
            + plot_rpd_bars(groups, out_dir, formats) + plot_cost(groups, out_dir, formats))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.plots", description="Figures from leaderboard.csv.")
    parser.add_argument("--csv", default="leaderboard.csv", help="leaderboard CSV (default: %(default)s)")
    parser.add_argument("--out", default="outputs/report/plots", help="output folder (default: %(default)s)")
    parser.add_argument("--format", action="append", choices=FORMATS, help="png and/or svg (default: both)")
    args = parser.parse_args(argv)
    if not Path(args.csv).is_file():
        print(f"error: {args.csv} not found; build it with python -m reports.aggregate [RUNS]", file=sys.stderr)
        return 2
    paths = make_plots(read_leaderboard(args.csv), args.out, tuple(args.format or FORMATS))
    if not paths:
        print("no reproduced rows in the CSV: nothing to plot (run python -m reports.aggregate RUNS first)")
    for p in paths:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
