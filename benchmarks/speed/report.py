"""The speed benchmark's printed tables and its JSON record."""

from __future__ import annotations

import json
import sys
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .suites import EVAL_TARGET_S, SPEEDUP_TARGET, TARGETS, VIREO_MEMORY_GIB

__all__ = ["format_table", "main_table", "target_lines", "probe_text", "eval_protocol_table", "loading_table",
           "scoring_table", "loader_table", "workers_needed", "clean", "write_json"]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _mfu(result: dict[str, Any] | None, peaks: dict[str, float] | None, key: str) -> float | None:
    if not result or not peaks or result.get("tflops") is None:
        return None
    return 100.0 * result["tflops"] / peaks[key]


def main_table(report: dict[str, Any]) -> str:
    """The short table: fp32 eager vs optimised (and their ratio) for train and eval."""
    modes = report["modes"]
    peaks = report.get("peak_tflops")
    cols = [m for m in ("fp32_eager", "optimized") if m in report.get("train", {}) or m in report.get("eval", {})]
    train, ev = report.get("train", {}), report.get("eval", {})

    def val(section: dict, mode: str, fn: Callable[[dict], Any]) -> Any:
        r = section.get(mode)
        if r is None:
            return None
        if "error" in r:
            return r["error"]
        try:
            return fn(r)
        except (KeyError, TypeError):
            return None

    lines: list[tuple[str, Callable[[dict], Any], dict, int, bool]] = [
        ("train img/s (median step)", lambda r: r["img_per_s"], train, 1, True),
        ("train step ms (median)", lambda r: r["time"]["median_s"] * 1e3, train, 1, False),
        ("train first step s", lambda r: r["first_step_s"], train, 2, False),
        ("train peak mem GiB", lambda r: (r["peak_memory"] or {}).get("allocated_gib"), train, 2, False),
        ("train GFLOP/img (fwd+bwd)", lambda r: r["flops_per_image"] / 1e9, train, 1, False),
        ("train TFLOP/s", lambda r: r["tflops"], train, 2, True),
        ("train MFU %", None, train, 1, False),
        (f"eval windows/s (x{report['spec']['eval_batch']})", lambda r: r["windows_per_s"], ev, 1, True),
        ("eval peak mem GiB", lambda r: (r["peak_memory"] or {}).get("allocated_gib"), ev, 2, False),
        ("eval GFLOP/window", lambda r: r["flops_per_window"] / 1e9, ev, 1, False),
        ("eval TFLOP/s", lambda r: r["tflops"], ev, 2, True),
        ("eval MFU %", None, ev, 1, False),
    ]
    rows = []
    for label, fn, section, digits, ratio in lines:
        if not section:
            continue
        cells = []
        for mode in cols:
            if fn is None:
                cells.append(_mfu(section.get(mode), peaks, modes[mode]["peak_key"]))
            else:
                cells.append(val(section, mode, fn))
        r = "-"
        if ratio and len(cells) == 2 and all(isinstance(c, (int, float)) for c in cells) and cells[0]:
            r = f"{cells[1] / cells[0]:.2f}x"
        rows.append([label, *(_fmt(c, digits) if not isinstance(c, str) else c for c in cells), r])
    headers = ["metric", *[modes[m]["label"] for m in cols], "ratio"]
    return format_table(headers, rows)


def target_lines(report: dict[str, Any]) -> list[str]:
    """PASS/FAIL against the issue's targets (meaningful on an H100 at paper scale)."""
    out = []
    name, spec = report["spec"]["method"], report["spec"]
    train = report.get("train", {})
    opt, base = train.get("optimized"), train.get("fp32_eager")
    device = report["device"]
    real = spec["scale"] == "paper" and "H100" in device
    tag = "" if real else "  (not comparable: targets are for paper scale on an H100)"
    goal = TARGETS.get(name, {}).get("train_img_s")
    if goal and opt and "img_per_s" in opt:
        ok = opt["img_per_s"] >= goal
        out.append(f"target train >= {goal:.0f} img/s: {'PASS' if ok else 'FAIL'} ({opt['img_per_s']:.1f}){tag}")
    if opt and base and "img_per_s" in opt and "img_per_s" in base:
        ratio = opt["img_per_s"] / base["img_per_s"]
        out.append(f"target optimized >= {SPEEDUP_TARGET:.0f}x fp32 eager: {'PASS' if ratio >= SPEEDUP_TARGET else 'FAIL'} "
                   f"({ratio:.2f}x){tag}")
    if name == "vireo" and spec["batch_size"] == 8 and opt and opt.get("peak_memory"):
        mem = opt["peak_memory"]["allocated_gib"]
        out.append(f"target Vireo batch 8 peak <= {VIREO_MEMORY_GIB:.0f} GiB: "
                   f"{'PASS' if mem <= VIREO_MEMORY_GIB else 'FAIL'} ({mem:.1f} GiB){tag}")
    est = report.get("eval_protocol")
    if est and est.get("protocol") == "gta2cbm" and est.get("targets_total_s"):
        t = est["targets_total_s"]
        out.append(f"target gta2cbm eval ({est['targets_images']} images) < {EVAL_TARGET_S / 60:.0f} min: "
                   f"{'PASS' if t < EVAL_TARGET_S else 'FAIL'} (est. {t / 60:.1f} min, loading overlapped){tag}")
    return out


def probe_text(pr: dict[str, Any]) -> str:
    lines = [f"probe ({pr['device']}, {pr['dtype']}): matmul {pr['matmul_tflops']:.1f} TFLOP/s, "
             f"device copy {pr['copy_gb_s']:.0f} GB/s (read + write)"]
    gemm = ", ".join(f"{h}: up {g['up_tflops']:.1f} / down {g['down_tflops']:.1f}" for h, g in pr["swiglu_gemm"].items())
    lines.append(f"  SwiGLU GEMMs by hidden width (TFLOP/s): {gemm}")
    sd = ", ".join(f"{k} {v['ms']:.2f} ms ({v['tflops']:.1f} TFLOP/s)" if "ms" in v else f"{k} n/a"
                   for k, v in pr["sdpa_fwd_bwd"].items())
    lines.append(f"  SDPA fwd+bwd: {sd}")
    bl = ", ".join(f"{k} {v['ms']:.2f} ms ({v['gflop']:.1f} GFLOP, {v['tflops']:.1f} TFLOP/s)"
                   for k, v in pr["block_fwd_bwd"].items())
    lines.append(f"  one block fwd+bwd: {bl}")
    return "\n".join(lines)


def eval_protocol_table(est: dict[str, Any]) -> str:
    rows = []
    for r in est["splits"]:
        if "skipped" in r:
            rows.append([r["key"], "-", "-", "-", "-", "-", "-", "-", r["skipped"]])
            continue
        rows.append([r["key"] + (" (ref)" if r["reference"] else ""), r["images"],
                     "x".join(map(str, r["native_hw"])), "x".join(map(str, r["resized_hw"])), r["windows_per_image"],
                     _fmt(r["s_per_image"] * 1e3, 1), _fmt(r.get("load_s_per_image", math.nan) * 1e3, 1),
                     r.get("workers_to_keep_up", "-"), _fmt(r["total_s"] / 60, 2)])
    head = ["split", "images", "native", "resized", "win/img", "ms/img", "load ms/img", "workers", "est. min"]
    text = format_table(head, rows)
    text += (f"\n{est['protocol']} targets: {est['targets_images']} images, est. {est['targets_total_s'] / 60:.2f} min "
             f"with loading overlapped")
    if "targets_total_s_serial_loading" in est:
        text += f", {est['targets_total_s_serial_loading'] / 60:.2f} min with serial loading"
    return text



def loading_table(rows: list[dict[str, Any]]) -> str:
    """Ours vs the plain cv2 baseline per image; the last line is ``worst ratio vs baseline: R``."""
    table = format_table(
        ["case", "ours CPU ms/img", "plain cv2 CPU ms/img", "ratio", "identical", "output"],
        [[r["case"], _fmt(r["ours_ms"], 1), _fmt(r["plain_ms"], 1), f"{r['ratio']:.3f}",
          "yes" if r["identical"] else "NO", "x".join(map(str, r["out_shape"] or ()))] for r in rows])
    worst = max((r["ratio"] for r in rows), default=math.nan)
    return table + f"\nworst ratio vs baseline: {worst:.3f}"


def scoring_table(rows: list[dict[str, Any]]) -> str:
    head = ["split", "scores", "native label", "identical", "full ms", "tiled ms", "full peak GiB", "tiled peak GiB"]
    return format_table(head, [[r["split"], "x".join(map(str, r["scores_hw"])), "x".join(map(str, r["label_hw"])),
                                "yes" if r["identical"] else "NO", _fmt(r["full_ms"], 0), _fmt(r["tiled_ms"], 0),
                                _fmt(r.get("full_peak_gib"), 3), _fmt(r.get("tiled_peak_gib"), 3)] for r in rows])


def workers_needed(rows: list[dict[str, Any]], targets: dict[str, float]) -> list[list[Any]]:
    """Per method with a target (img/s per GPU): the measured cost of its training sample on GTA-size images and
    the loader workers that keeps up, ceil(target x seconds per image)."""
    out = []
    for method, target in targets.items():
        row = next((r for r in rows if r["case"].startswith("train ") and "(gta-size" in r["case"]
                    and method in r["case"].split()[1].split("/")), None)
        if row is not None:
            out.append([method, f"{target:.0f}", _fmt(row["ours_ms"], 1), math.ceil(target * row["ours_ms"] / 1e3)])
    return out


def loader_table(rows: list[dict[str, Any]]) -> str:
    return format_table(["workers", "first batch s", "img/s (all)", "img/s (steady)"],
                        [[r["workers"], _fmt(r["first_batch_s"], 2), _fmt(r["img_per_s"], 1),
                          _fmt(r["steady_img_per_s"], 1)] for r in rows])


def clean(obj: Any) -> Any:
    """JSON-safe copy (live objects such as modules become their type name)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
        return type(obj).__name__
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def write_json(path: str | None, report: dict[str, Any]) -> None:
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean(report), indent=1))
    print(f"numbers: {out}", file=sys.stderr)  # stdout ends with the table
