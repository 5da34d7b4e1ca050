"""One self-contained HTML page per run: ``python -m reports.run RUN... [--out PATH] [--selftest]``.

The page (default ``RUN/report.html``; figures and images inline, no network) shows what a researcher reads
a run by: the resolved spec and evaluation profile, the loss and learning-rate curves from
``train_log.jsonl``, mIoU/rPD per target, per-class IoU per target, each target's confusion matrix as a
heatmap (row-normalised: share of each ground-truth class predicted as each class), the gallery rows (image
| ground truth | prediction), timings and cost. The HTML leaderboard links each row to its runs' pages.
``--selftest`` opens the page in headless Chromium (every image must load, no console errors).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.evaluate import load_confusions
from benchmarks.predictions import prediction_files
from datasets.labels import CITYSCAPES_CLASSES
from reports.aggregate import _gpu_hours
from reports.gallery import GalleryRun, run_label, runs_from_cli
from reports.html import TEMPLATE_DIR, _heat, chromium_selftest, print_selftest
from reports.reported import dataset_display
from runners.loggers import loss_names

__all__ = ["PAGE_NAME", "build_run_context", "render_run_page", "write_run_page", "read_train_log", "curves_png",
           "confusion_shares", "main"]

PAGE_NAME = "report.html"
TEMPLATE = "run.html.j2"


def read_train_log(folder: Path) -> list[dict[str, Any]]:
    """Lines of ``<run>/train_log.jsonl`` (none when the run did not train)."""
    path = folder / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def curves_png(log: Sequence[dict[str, Any]]) -> bytes | None:
    """Loss (total and every named loss), LR per parameter group, grad norm and it/s against iterations."""
    if not log:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [e["iteration"] for e in log]
    losses = ["loss"] + loss_names(log[0])
    n_groups = max(len(e.get("lr_groups") or [e["lr"]]) for e in log)
    with plt.rc_context({"axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100}):
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
        for k in losses:
            axes[0].plot(its, [e.get(k, np.nan) for e in log], lw=2.2 if k == "loss" else 1.2,
                         label="total" if k == "loss" else k)
        axes[0].set_title("loss")
        axes[0].legend(fontsize=7, frameon=False)
        for g in range(n_groups):
            axes[1].plot(its, [(e.get("lr_groups") or [e["lr"]])[g] if g < len(e.get("lr_groups") or [e["lr"]])
                               else np.nan for e in log], label=f"group {g}")
        axes[1].set_title("learning rate per parameter group")
        axes[1].set_yscale("log")
        axes[1].legend(fontsize=7, frameon=False)
        if any("grad_norm" in e for e in log):
            axes[2].plot(its, [e.get("grad_norm", np.nan) for e in log], color="C3", label="grad norm")
        axes[2].set_title("grad norm (left), it/s (right)")
        twin = axes[2].twinx()
        twin.plot(its, [e.get("it_per_s", np.nan) for e in log], color="C7", lw=1, label="it/s")
        for ax in axes:
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
    return buf.getvalue()


def confusion_shares(confusion: np.ndarray) -> np.ndarray:
    """Row-normalised confusion (% of each ground-truth class's pixels), NaN for classes absent from the GT."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, 100.0 * confusion / rows, np.nan)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _confusion_model(run: GalleryRun, key: str, split: dict[str, Any]) -> dict[str, Any] | None:
    path = run.folder / split.get("confusion", "")
    if not split.get("confusion") or not path.is_file():
        return None
    names, cms = load_confusions(path)
    total = cms.sum(0)
    shares = confusion_shares(total)
    rows = []
    for i, cls in enumerate(CITYSCAPES_CLASSES):
        cells = []
        for j in range(len(CITYSCAPES_CLASSES)):
            v = None if np.isnan(shares[i, j]) else float(shares[i, j])
            colour = "" if v is None else (f"background:hsl(215,70%,{97 - 0.55 * v:.0f}%)"
                                           + (";color:white" if v > 55 else ""))
            cells.append({"v": _fmt(v, 1), "style": colour, "count": int(total[i, j])})
        rows.append({"name": cls, "pixels": int(total[i].sum()), "cells": cells})
    return {"key": key, "display": dataset_display(key), "num_images": len(names), "rows": rows}


def build_run_context(run: GalleryRun) -> dict[str, Any]:
    """Everything the run page shows, from the record and the run folder."""
    rec = run.record
    res = rec["results"]
    splits = dict(res["targets"])
    ref = res.get("reference")
    if ref:
        splits[ref["key"]] = ref
    summary = []
    for key, t in res["targets"].items():
        summary.append({"key": key, "display": dataset_display(key), "miou": _fmt(t["miou"]),
                        "rpd": _fmt(res.get("rpd", {}).get(key), 1), "num_images": t.get("num_images", ""),
                        "seconds": _fmt(t.get("seconds"), 1), "num_classes": t.get("num_classes", 19)})
    per_class = []
    for cls in CITYSCAPES_CLASSES:
        values = []
        for key, t in splits.items():
            v = (t.get("per_class_iou") or {}).get(cls)
            values.append({"key": key, "v": _fmt(v), "style": _heat(v)})
        per_class.append({"name": cls, "values": values})
    gallery = []
    for key, t in res["targets"].items():
        folder, names = run.gallery(key)
        rows = []
        for name in names:
            files = prediction_files(folder, name)
            if all(p.is_file() for p in files.values()):
                rows.append({"name": name, "image": _data_uri(files["image"], "image/jpeg"),
                             "gt": _data_uri(files["gt"], "image/png"), "pred": _data_uri(files["pred"], "image/png")})
        if rows:
            gallery.append({"key": key, "display": dataset_display(key), "miou": _fmt(t["miou"]), "rows": rows})
    log = read_train_log(run.folder)
    curves = curves_png(log)
    timings = rec.get("timings") or {}
    train = rec.get("train") or {}
    env = rec.get("environment") or {}
    gpu_hours = _gpu_hours(rec)
    spec = rec.get("spec") or {}
    protocol = spec.get("protocol") or {}
    return {
        "title": f"{run_label(rec)} on {rec['protocol']} [{rec.get('eval_variant', 'default')}]",
        "run_id": run.run_id, "record": rec, "miniature": bool(rec.get("miniature")),
        "pretrained": rec.get("pretrained"),
        "profile": rec.get("profile") or spec.get("profile") or "",
        "protocol_description": protocol.get("description", ""),
        "summary": summary, "mean_miou": _fmt(res.get("mean_miou")), "mean_rpd": _fmt(res.get("mean_rpd"), 1),
        "reference": {"key": ref["key"], "display": dataset_display(ref["key"]), "miou": _fmt(ref["miou"])} if ref else None,
        "split_keys": [{"key": k, "display": dataset_display(k), "is_ref": ref is not None and k == ref["key"]}
                       for k in splits],
        "per_class": per_class,
        "confusions": [c for c in (_confusion_model(run, k, t) for k, t in splits.items()) if c],
        "gallery": gallery,
        "curves": None if curves is None else "data:image/png;base64," + base64.b64encode(curves).decode("ascii"),
        "log_points": len(log),
        "final_log": log[-1] if log else None,
        "timings": {"total_s": _fmt(timings.get("total_s"), 1), "train_s": _fmt(timings.get("train_s"), 1),
                    "eval_s": _fmt(timings.get("eval_s"), 1), "iterations": train.get("iterations", ""),
                    "images_per_second": _fmt(train.get("images_per_second"), 2),
                    "gpu_hours": _fmt(gpu_hours, 3), "device": env.get("device", ""),
                    "gpu": env.get("gpu", ""), "gpu_count": env.get("gpu_count", "")},
        "params": rec.get("params") or {},
        "environment": env,
        "spec_json": json.dumps(spec, indent=2, sort_keys=True, default=str),
        "weights_json": json.dumps(rec.get("weights") or {}, indent=2, default=str),
    }


def render_run_page(run: GalleryRun) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**build_run_context(run))


def write_run_page(run: GalleryRun, out: Path | str | None = None) -> Path:
    """Write the page of ``run`` (default ``<run>/report.html``)."""
    out = Path(out) if out else run.folder / PAGE_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_run_page(run), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.run", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (or result.json files, or folders of runs)")
    parser.add_argument("--out", default=None, help=f"output page, one run only (default: RUN/{PAGE_NAME})")
    parser.add_argument("--selftest", action="store_true", help="open each page in headless Chromium and check it")
    args = parser.parse_args(argv)
    runs = runs_from_cli(args.runs)
    if runs is None:
        return 2
    if args.out and len(runs) != 1:
        print(f"error: --out names one page but {len(runs)} runs were given; leave it out to write RUN/{PAGE_NAME}",
              file=sys.stderr)
        return 2
    ok = True
    for run in runs:
        page = write_run_page(run, args.out)
        print(f"wrote {page}")
        if args.selftest:
            ok = print_selftest(chromium_selftest(page)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
