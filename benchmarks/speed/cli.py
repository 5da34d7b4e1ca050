"""The speed benchmark's command line, ``python -m runners.speed``.

The model-level suites time registered methods with the trainer's own step, so the command needs ``methods``
(the registry, the recipes) and ``runners.train``, which ``benchmarks`` may not import: the caller hands them
in as :class:`ModelSupport` (``runners.speed`` does). Without it (``python -m benchmarks.speed``) the command
says where it lives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..protocols import get_protocol
from .data import (GTA_SIZE, bench_loader, bench_loading, bench_scoring, eval_cases, fixture_roots, train_cases,
                   write_bdd_like, write_gta_like)
from .flops import peak_tflops
from .report import (_fmt, _mfu, clean, eval_protocol_table, format_table, loader_table, loading_table, main_table,
                     probe_text, scoring_table, target_lines, workers_needed, write_json)
from .suites import (TARGETS, TrainerParts, attention_report, bench_eval, bench_train, estimate_protocol_eval,
                     find_host_syncs, make_optimizer, synthetic_batch)
from .timing import baseline_mode, device_name, free_memory, is_oom, optimized_mode, precision, profile_steps

__all__ = ["ModelSupport", "build_parser", "main", "parse_size", "DEFAULT_FIXTURES"]

DEFAULT_FIXTURES = Path(os.environ.get("DGSS_FIXTURES", "/work/shared/fixtures"))
"""Full-resolution real-format fixtures (Mapillary 3984x2988, Cityscapes 2048x1024) for ``--data``."""

SCORING_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    # name: (scores (h, w) after the test resize, native label (H, W))
    "mapillary (default, 2048x1024 resize)": ((1024, 1365), (2988, 3984)),
    "cityscapes (rein, 1024x512 resize)": ((512, 1024), (1024, 2048)),
    "bdd100k (vltseg, 1024x512 resize)": ((512, 910), (720, 1280)),
}


@dataclass(frozen=True)
class ModelSupport:
    """What the command takes from the layers above ``benchmarks`` (provided by ``runners.speed``)."""

    resolve_method: Callable[..., Any]                 # name, backbone=, scale=, ... -> a method spec
    list_methods: Callable[[], list[str]]
    trainer: TrainerParts                              # the trainer's build_optimizer and train_step
    train_recipes: Callable[[], dict[str, Any]]        # {"rein/set/vireo": (TrainAugmentation, detail), ...}
    check_grad_checkpointing: Callable[..., dict[str, Any]]
    probe: Callable[[torch.device], dict[str, Any]]
    miniature_root: Callable[[], Path]
    prog: str = "python -m runners.speed"


def parse_size(value: int | str | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        return (int(parts[0]), int(parts[-1]))
    a, b = value
    return (int(a), int(b))


def build_parser(prog: str = "python -m runners.speed") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time the full training step (the trainer's own) and sliding-window evaluation of a method: "
                    "optimised vs fp32 eager in one run (img/s, peak memory, TFLOP/s, MFU); --data: data loading "
                    "against a plain cv2 baseline and scoring at native resolution.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", required=False, help="registered method name (python -m runners.run --help)")
    p.add_argument("--backbone", default=None, help="backbone name (default: the method's first)")
    p.add_argument("--scale", choices=("paper", "miniature"), default=None,
                   help="paper (default on CUDA) or miniature (default on CPU)")
    p.add_argument("--source", default="gta5", help="source domain whose recipe is used")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's batch size")
    p.add_argument("--res", default=None, help="training crop, e.g. 512 or 512x1024 (default: the recipe's)")
    p.add_argument("--eval-res", default=None, help="sliding window size (default 512 paper / 256 miniature)")
    p.add_argument("--eval-batch", type=int, default=None, help="windows per predict call (default 8 CUDA, 2 CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5 CUDA, 1 CPU; >=3 w/ compile)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--modes", choices=("both", "optimized", "baseline"), default="both")
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation timing")
    p.add_argument("--precision", choices=("bf16", "tf32", "fp32"), default="bf16",
                   help="the optimised mode's numerics, as runners.run --precision (benchmarks.numerics)")
    p.add_argument("--compile", action="store_true", help="optimised mode: torch.compile training_step / predict")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default, max-autotune, ...)")
    p.add_argument("--channels-last", action="store_true", help="optimised mode: channels-last model and inputs")
    p.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing (both modes)")
    p.add_argument("--sync-debug", action="store_true",
                   help="run one optimised step under torch.cuda.set_sync_debug_mode('warn') and list host syncs")
    p.add_argument("--profile", action="store_true", help="print the top kernels of 3 optimised steps")
    p.add_argument("--trace", default=None, help="with --profile: write a Chrome trace here")
    p.add_argument("--probe", action="store_true", help="GPU ceilings and suspect-kernel micro-benchmarks")
    p.add_argument("--check-grad-checkpointing", action="store_true",
                   help="compare losses/gradients with and without activation checkpointing")
    p.add_argument("--data", action="store_true",
                   help="data loading (every recipe's training sample, the gta2cbm test loads) against a plain cv2 "
                        "baseline on real-format images, and scoring at native resolution; no model is timed "
                        "unless --method is given")
    p.add_argument("--data-images", type=int, default=3, help="images per case (and generated per size)")
    p.add_argument("--data-reps", type=int, default=5, help="rounds over the images per case (medians)")
    p.add_argument("--data-size", default=f"{GTA_SIZE[0]}x{GTA_SIZE[1]}", help="generated GTA-size images, HxW")
    p.add_argument("--fixtures", default=str(DEFAULT_FIXTURES), help="full-resolution fixtures folder")
    p.add_argument("--no-miniature", action="store_true", help="--data: leave out the miniature benchmark's files")
    p.add_argument("--no-scoring", action="store_true", help="--data: leave out the scoring comparison")
    p.add_argument("--data-workers", default=None,
                   help="--data: also time a real DataLoader on the GTA-size images with these worker counts, "
                        "e.g. 0,2,4,8")
    p.add_argument("--eval-protocol", default=None, help="estimate this protocol's full evaluation time")
    p.add_argument("--eval-variant", default="default", help="protocol variant for --eval-protocol")
    p.add_argument("--eval-reps", type=int, default=None, help="timed images per size (default 3 CUDA, 1 CPU)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the optimised-mode peak for MFU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write all numbers to this JSON file")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    p.add_argument("--suite", default=None,
                   help="comma-separated methods (or 'targets': the issue's methods that are registered), each "
                        "run in its own process with the other flags; one summary table at the end")
    p.add_argument("--json-dir", default=None, help="with --suite: write <method>.json files here")
    p.add_argument("--suite-timeout", type=int, default=420, help="with --suite: seconds per method")
    return p


# ---------------------------------------------------------------------------------------------- --data
def run_data(args: argparse.Namespace, models: ModelSupport, device: torch.device, emit: Callable[[str], None]
             ) -> dict[str, Any]:
    """Loading (ours vs plain cv2) on generated GTA-/BDD-size files, the full-resolution fixtures and the
    miniature benchmark; scoring at native resolution; optionally DataLoader throughput per worker count."""
    out: dict[str, Any] = {}
    recipes = models.train_recipes()
    protocol = get_protocol("gta2cbm")
    size = parse_size(args.data_size)
    with tempfile.TemporaryDirectory(prefix="dgss_speed_data_") as tmp:
        gta = write_gta_like(Path(tmp) / "gta", args.data_images, size, seed=args.seed)
        bdd = write_bdd_like(Path(tmp) / "bdd", args.data_images, seed=args.seed)
        fixtures = fixture_roots(args.fixtures, Path(tmp) / "fixtures") if Path(args.fixtures).is_dir() else {}
        train_roots = {f"gta-size {size[1]}x{size[0]}": gta}
        eval_roots: dict[str, dict[str, Path]] = {"fixtures": fixtures, "bdd-size 1280x720": {"bdd100k": bdd}}
        if not args.no_miniature:
            mini = models.miniature_root()
            train_roots["miniature"] = mini
            eval_roots["miniature"] = {d: mini for d in ("cityscapes", "bdd100k", "mapillary")}
        cases = train_cases(train_roots, recipes) + eval_cases(eval_roots, protocol)
        rows = bench_loading(cases, reps=args.data_reps, max_images=args.data_images, seed=args.seed)
        out["loading"] = rows
        if args.data_workers:  # the first case: the first recipe on the GTA-size files
            workers = [int(k) for k in args.data_workers.split(",")]
            out["loader"] = bench_loader(cases[0].dataset, batch_size=8, workers=workers,
                                         pin_memory=device.type == "cuda", seed=args.seed)
            out["loader_case"] = f"{cases[0].name}, batch 8"
    if not args.no_scoring:
        out["scoring"] = bench_scoring(SCORING_SIZES, device=device, reps=max(1, min(args.data_reps, 3)))
        emit(f"\nscoring at native label resolution ({device_name(device)}): one-shot float32 resize + argmax "
             "(full) vs resized_argmax (one class at a time); ms: CPU time on a CPU; peak: memory the step adds:\n"
             + scoring_table(out["scoring"]))
    if "loader" in out:
        emit(f"\nDataLoader throughput ({out['loader_case']}; {os.cpu_count()} cores):\n"
             + loader_table(out["loader"]))
    need = workers_needed(out["loading"], {m: t["train_img_s"] for m, t in TARGETS.items()})
    if need:
        emit("\nloader workers per GPU at the target speed = ceil(target img/s x ms per training sample / 1000):\n"
             + format_table(["method", "target img/s", "ms/sample (ours)", "workers"], need))
    emit(f"\ndata loading per image, one process ({device_name(torch.device('cpu'))}, {os.cpu_count()} cores; CPU-time "
         f"medians of >= {args.data_reps} rounds over up to {args.data_images} images and >= 15 timings per case, ours "
         "and the plain baseline alternating):\n"
         + loading_table(out["loading"]))
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None, models: ModelSupport | None = None) -> int:
    """Run the command; ``models`` comes from ``runners.speed`` (see the module docstring)."""
    if models is None:
        print("error: the speed benchmark builds methods and times the trainer's step, which the benchmarks layer "
              "may not import; run it as python -m runners.speed (same flags)", file=sys.stderr)
        return 2
    args = build_parser(models.prog).parse_args(argv)
    if args.list_methods:
        print("\n".join(models.list_methods()))
        return 0
    if args.suite:
        return run_suite(args, list(argv if argv is not None else sys.argv[1:]), models)
    if not args.method and not (args.data or args.probe):
        print(f"error: --method (or --data / --probe) is required; registered: {', '.join(models.list_methods())}",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    scale = args.scale or ("paper" if cuda else "miniature")
    steps = args.steps if args.steps is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.compile:
        warmup = max(warmup, 3)
    eval_batch = args.eval_batch or (8 if cuda else 2)
    opt_mode = optimized_mode(device, precision=args.precision, compile=args.compile, compile_mode=args.compile_mode,
                              channels_last=args.channels_last)
    base_mode = baseline_mode(device)
    modes = {"both": [base_mode, opt_mode], "optimized": [opt_mode], "baseline": [base_mode]}[args.modes]
    peaks = peak_tflops(device_name(device)) if cuda else None
    if args.peak_tflops:
        peaks = dict(peaks or {"fp32": math.nan, "tf32": math.nan})
        peaks[opt_mode.peak_key] = args.peak_tflops
    report: dict[str, Any] = {
        "tool": "runners.speed", "argv": list(argv if argv is not None else sys.argv[1:]),
        "device": device_name(device), "torch": torch.__version__, "peak_tflops": peaks,
        "cuda": torch.version.cuda, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "modes": {m.key: {"label": m.label, "settings": m.describe(), "peak_key": m.peak_key} for m in modes},
    }
    try:
        import timm

        report["timm"] = timm.__version__
        from timm.layers import use_fused_attn

        report["timm_use_fused_attn"] = bool(use_fused_attn())
    except Exception:  # noqa: BLE001
        pass
    printed: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        printed.append(text)

    spec = None
    if args.method:
        spec = models.resolve_method(args.method, backbone=args.backbone, scale=scale, source=args.source,
                                     batch_size=args.batch_size, res=parse_size(args.res) if args.res else None,
                                     eval_res=parse_size(args.eval_res) if args.eval_res else None,
                                     eval_batch=eval_batch, grad_checkpointing=args.grad_checkpointing)
        report["spec"] = {"method": spec.name, "backbone": spec.backbone, "scale": spec.scale,
                          "source": spec.source, "batch_size": spec.batch_size, "res": list(spec.res),
                          "eval_res": list(spec.eval_res), "eval_batch": spec.eval_batch, "steps": steps,
                          "warmup": warmup, "grad_checkpointing": spec.grad_checkpointing,
                          "recipe_source": getattr(spec.recipe, "source", "")}
        emit(f"speed: {spec.describe()} on {report['device']}, torch {torch.__version__}")

    # -------- data loading and scoring (printed last: its final line is the worst ratio)
    data: dict[str, Any] | None = None
    data_lines: list[str] = []
    if args.data:
        data = run_data(args, models, device, data_lines.append)
        report["data"] = data
    if spec is None:
        if args.probe:
            report["probe"] = models.probe(device)
            emit(probe_text(report["probe"]))
        for text in data_lines:
            emit(text)
        write_json(args.json, report)
        return 0 if data is None or all(r["identical"] for r in data["loading"]) else 1

    assert spec is not None
    images, labels = synthetic_batch(spec.batch_size, spec.res, seed=args.seed + 1, device=device)
    windows, _ = synthetic_batch(spec.eval_batch, spec.eval_res, seed=args.seed + 2, device=device)

    # -------- grad-checkpointing check
    if args.check_grad_checkpointing:
        gc_spec = dataclasses.replace(spec, grad_checkpointing=True)
        report["grad_checkpointing_check"] = models.check_grad_checkpointing(
            gc_spec, device=device, batch=min(2, spec.batch_size), res=spec.res, seed=args.seed)
        free_memory(device)

    # -------- train / eval per mode
    report["train"], report["eval"] = {}, {}
    kept: dict[str, Any] = {}
    for mode in modes:
        method = None
        if not args.no_train:
            try:
                r = bench_train(spec, mode, images, labels, trainer=models.trainer, steps=steps, warmup=warmup,
                                device=device, seed=args.seed, keep=True)
                method = r.pop("_method")
                kept[mode.key] = (method, r.pop("_optimizer"))
                report["train"][mode.key] = r
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                report["train"][mode.key] = {"error": "OOM"}
                free_memory(device)
        if "attention" not in report and method is not None:
            report["attention"] = attention_report(method)
        if not args.no_eval:
            try:
                if method is not None:
                    kept[mode.key][1].zero_grad(set_to_none=True)
                    kept[mode.key] = (method, None)
                    free_memory(device)
                report["eval"][mode.key] = bench_eval(spec, mode, windows, steps=steps, warmup=warmup, device=device,
                                                      method=method, seed=args.seed)
            except Exception as exc:  # noqa: BLE001
                if not is_oom(exc):
                    raise
                report["eval"][mode.key] = {"error": "OOM"}
        if mode.key != opt_mode.key:
            kept.pop(mode.key, None)
            method = None
            free_memory(device)

    # -------- extras on the optimised model
    opt_method = kept.get(opt_mode.key, (None, None))[0]
    if args.sync_debug:
        report["sync_debug"] = find_host_syncs(spec, dataclasses.replace(opt_mode, compile=False), images, labels,
                                               trainer=models.trainer, device=device, seed=args.seed,
                                               method=opt_method)
    if args.profile:
        m = opt_method or spec.build(device, seed=args.seed)
        m.train()
        opt = make_optimizer(m, spec.recipe, opt_mode, models.trainer)
        params = [p for g in opt.param_groups for p in g["params"]]
        with precision(opt_mode, device):
            def fn() -> None:
                models.trainer.train_step(m.training_step, opt, params, images, labels,
                                          autocast=opt_mode.autocast(device), grad_clip=spec.recipe.grad_clip)

            fn()
            report["profile_table"] = profile_steps(fn, device, trace=Path(args.trace) if args.trace else None)
        del opt
    if args.eval_protocol:
        protocol = get_protocol(args.eval_protocol, variant=args.eval_variant)
        m = opt_method or spec.build(device, seed=args.seed)
        m.eval()
        with precision(opt_mode, device):
            predict = torch.compile(m.predict, mode=opt_mode.compile_mode) if opt_mode.compile else m.predict
            report["eval_protocol"] = estimate_protocol_eval(
                predict, protocol, device=device, mode=opt_mode, batch_windows=eval_batch,
                reps=args.eval_reps or (3 if cuda else 1), seed=args.seed)
    if args.probe:
        report["probe"] = models.probe(device)

    # -------- output: details first, the short table last
    if "attention" in report:
        att = report["attention"]
        timm_att = ", ".join(f"{k}: {v['fused']} fused / {v['not_fused']} not" for k, v in att["timm_attention"].items())
        emit(f"\nattention: timm {timm_att or 'none'}; project SDPA modules "
             f"{att['project_attention_modules'] or 'none'}; timm use_fused_attn()={report.get('timm_use_fused_attn')}")
    for key in ("optimized", "fp32_eager"):
        tr = report["train"].get(key)
        if tr and "flop_detail" in tr:
            calls = tr["flop_detail"]["calls"]
            emit(f"kernels in one {report['modes'][key]['label']} step: "
                 + ", ".join(f"{k} x{v}" for k, v in calls.items()))
    if "grad_checkpointing_check" in report:
        c = report["grad_checkpointing_check"]
        emit(f"\ngrad checkpointing check: loss {c['loss_without']:.6f} vs {c['loss_with']:.6f} "
             f"(|diff| {c['loss_abs_diff']:.2e}), max rel grad diff {c['max_rel_grad_diff']:.2e} over {c['num_grads']} "
             f"tensors, {c['recomputed_blocks']} blocks recomputed in backward")
    if "sync_debug" in report:
        s = report["sync_debug"]
        if not s.get("available"):
            emit(f"\nhost syncs: n/a ({s.get('reason')})")
        else:
            emit(f"\nhost syncs in one optimised step: {s['num_syncs']}")
            for p in s["places"][:12]:
                emit(f"  {p['count']:3d}x {' <- '.join(reversed(p['where']))}: {p['message'][:100]}")
    if "profile_table" in report:
        emit("\nprofile (3 optimised steps):\n" + report["profile_table"])
    if "probe" in report:
        emit("\n" + probe_text(report["probe"]))
    if "eval_protocol" in report:
        emit(f"\nevaluation estimate, protocol {args.eval_protocol} ({args.eval_variant}), optimised mode, "
             f"batch_windows {eval_batch}:\n" + eval_protocol_table(report["eval_protocol"]))
    emit("")
    for m in modes:
        emit(f"{m.label}: {m.describe()}")
    if peaks:
        emit("peaks (TFLOP/s): " + ", ".join(f"{k} {v:g}" for k, v in peaks.items()))
    elif cuda:
        emit("MFU: no peak known for this GPU (use --peak-tflops)")
    else:
        emit("MFU: n/a on a CPU")
    for line in target_lines(report):
        emit(line)
    emit(main_table(report))
    for text in data_lines:
        emit(text)
    write_json(args.json, report)
    return 0 if data is None or all(r["identical"] for r in data["loading"]) else 1


def _strip_suite_args(argv: list[str]) -> list[str]:
    """argv without --suite / --json-dir / --suite-timeout / --json / --method (and their values)."""
    drop_with_value = {"--suite", "--json-dir", "--suite-timeout", "--json", "--method"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop_with_value:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in drop_with_value):
            continue
        out.append(a)
    return out


def run_suite(args: argparse.Namespace, argv: list[str], models: ModelSupport) -> int:
    """Run the tool once per method in a fresh process (GPU memory and failures stay separate), then print one
    summary table. Output of every run streams through; numbers go to ``--json-dir``."""
    registered = models.list_methods()
    if args.suite == "targets":
        names = [m for m in TARGETS if m in registered]
    else:
        names = [m.strip() for m in args.suite.split(",") if m.strip()]
    unknown = [m for m in names if m not in registered]
    if unknown:
        print(f"suite: not registered (skipped): {', '.join(unknown)}; registered: {', '.join(registered)}")
    names = [m for m in names if m in registered]
    out_dir = Path(args.json_dir or tempfile.mkdtemp(prefix="dgss_speed_suite_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    common = _strip_suite_args(argv)
    results: dict[str, Any] = {}
    for name in names:
        path = out_dir / f"{name}.json"
        cmd = [sys.executable, "-m", "runners.speed", "--method", name, "--json", str(path), *common]
        print(f"\n===== suite: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=args.suite_timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        wall = time.perf_counter() - t0
        results[name] = {"rc": rc, "wall_s": wall,
                         "report": json.loads(path.read_text()) if path.is_file() else None}
    rows = []
    for name, r in results.items():
        rep = r["report"]
        if rep is None:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", f"failed ({r['rc']})"])
            continue
        tr = rep.get("train", {})
        opt, base = tr.get("optimized", {}), tr.get("fp32_eager", {})
        peaks = rep.get("peak_tflops")
        ratio = (opt["img_per_s"] / base["img_per_s"]) if "img_per_s" in opt and "img_per_s" in base else None
        mem = (opt.get("peak_memory") or {}).get("allocated_gib")
        ev = rep.get("eval", {}).get("optimized", {})
        verdicts = [f"{ln.split()[1]}:{ln.split(':')[1].split('(')[0].strip()}" for ln in target_lines(rep)]
        rows.append([name, rep["spec"]["batch_size"], _fmt(opt.get("img_per_s")), _fmt(base.get("img_per_s")),
                     f"{ratio:.2f}x" if ratio else "-", _fmt(mem, 2), _fmt(_mfu(opt, peaks, "bf16")),
                     _fmt(ev.get("windows_per_s")), _fmt((rep.get("eval_protocol") or {}).get("targets_total_s", math.nan) / 60, 2),
                     " ".join(verdicts) or "-"])
    print(f"\nsuite summary ({len(names)} methods; numbers in {out_dir}):")
    print(format_table(["method", "batch", "opt img/s", "fp32 img/s", "ratio", "peak GiB", "MFU %", "eval win/s",
                        "eval min", "targets"], rows))
    (out_dir / "suite.json").write_text(json.dumps(clean({k: {"rc": v["rc"], "wall_s": v["wall_s"]}
                                                           for k, v in results.items()}), indent=1))
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1
