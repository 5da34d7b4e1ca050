"""Train and evaluate one method on one protocol: ``python -m runners.run --method M --protocol P``.

Without a data root (``--data-root`` / ``$DGSS_DATA_ROOT``) the run uses the built-in miniature benchmark
and the method's CPU-sized configuration; with one, the paper recipe at real scale. Every run writes a
result record (``<out>/result.json``) with the full resolved spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.evaluate import evaluate_split
from benchmarks.metrics import mean_over_targets, rpd
from benchmarks.protocols import Protocol, get_protocol, list_protocols, list_variants
from datasets import build_dataset
from datasets.labels import CITYSCAPES_CLASSES
from datasets.miniature import ensure_miniature, is_miniature_root
from datasets.transforms import TestTransform, TrainAugmentation, TrainTransform
from methods.base import Method, TrainRecipe
from methods.registry import get_method_class, list_methods
from methods.weights import weights_dir_from
from runners.records import RECORD_FILE, RECORD_SCHEMA, content_hash, environment, now_iso, write_json_atomic
from runners import distributed
from runners.train import Trainer

DATA_ROOT_ENV = "DGSS_DATA_ROOT"
PATH_KEYS = ("data_root", "weights_dir", "out")  # machine-specific: not part of the spec hash
BOOKKEEPING_RECIPE_KEYS = ("checkpoint_interval", "log_interval", "source")  # do not change results


def build_parser() -> argparse.ArgumentParser:
    methods, protocols = list_methods(), list_protocols()
    parser = argparse.ArgumentParser(
        prog="python -m runners.run",
        description="Train and evaluate a DGSS method on a protocol.\n\n"
                    f"methods:   {', '.join(methods)}\nprotocols: {', '.join(protocols)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", required=True, choices=methods)
    parser.add_argument("--protocol", default="gta2cbm", choices=protocols)
    parser.add_argument("--eval-variant", default="default",
                        help="named evaluation variant of the protocol (e.g. rein, tqdm); default: harmonised")
    parser.add_argument("--backbone", default=None, help="backbone name (default: the method's paper backbone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=None, help="override the recipe's iterations")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    parser.add_argument("--lr", type=float, default=None, help="override the recipe's base learning rate")
    parser.add_argument("--checkpoint-interval", type=int, default=None, help="iterations between checkpoints")
    parser.add_argument("--log-interval", type=int, default=None, help="iterations between log lines")
    parser.add_argument("--data-root", default=None,
                        help=f"folder with the datasets in their official layouts (or ${DATA_ROOT_ENV}); "
                             "without it the built-in miniature benchmark runs")
    parser.add_argument("--weights-dir", default=None, help="folder with official weight files (or $DGSS_WEIGHTS)")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="on real data, run with randomly initialised backbones when weights are missing")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<run name>)")
    parser.add_argument("--resume", action="store_true", help="resume from <out>/checkpoints/last.pt")
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="weights to evaluate with --eval-only")
    parser.add_argument("--no-reference", action="store_true", help="skip the rPD reference split")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=None, help="data loader workers")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model at real scale on the meta device, print the resolved spec and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


# ---------------------------------------------------------------------------------------------- resolution
@dataclasses.dataclass
class ResolvedRun:
    method_class: type[Method]
    backbone: str
    scale: str
    config: Any
    recipe: TrainRecipe
    protocol: Protocol
    data_root: Path
    miniature: bool
    weights_dir: Path | None
    seed: int
    out: Path
    spec: dict[str, Any]
    spec_hash: str


def hashed_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec that identifies a run: no machine paths, no logging/checkpoint cadence."""
    out = {k: v for k, v in spec.items() if k not in PATH_KEYS}
    out["recipe"] = {k: v for k, v in spec["recipe"].items() if k not in BOOKKEEPING_RECIPE_KEYS}
    return out


def resolve(args: argparse.Namespace, *, log=print) -> ResolvedRun:
    cls = get_method_class(args.method)
    backbone = args.backbone or cls.backbones[0]
    if backbone not in cls.backbones:
        raise SystemExit(f"error: {cls.name} supports backbones {', '.join(cls.backbones)}; got {backbone!r}")
    data_root_arg = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if args.dry_run:
        miniature, data_root = False, Path(data_root_arg) if data_root_arg else Path("<data-root>")
    elif data_root_arg:
        data_root = Path(data_root_arg)
        miniature = is_miniature_root(data_root)
        if not data_root.is_dir():
            raise SystemExit(f"error: data root {data_root} does not exist (from --data-root or ${DATA_ROOT_ENV})")
    else:
        data_root = ensure_miniature()
        miniature = True
        log(f"No data root given (--data-root / ${DATA_ROOT_ENV}): running the built-in miniature benchmark "
            f"from {data_root}; results are labelled miniature and never mixed with real-data results.")
    scale = "miniature" if miniature else "paper"
    source = get_protocol(args.protocol).source.dataset
    recipe = cls.recipe(source=source, scale=scale, backbone=backbone).replace(
        iterations=args.iters, batch_size=args.batch_size, lr=args.lr,
        checkpoint_interval=args.checkpoint_interval, log_interval=args.log_interval)
    protocol = get_protocol(args.protocol, miniature=miniature, variant=args.eval_variant)
    if protocol.source.dataset == "gta5":
        protocol = dataclasses.replace(protocol, source=dataclasses.replace(protocol.source, split=recipe.gta_split))
    config = cls.default_config(backbone, scale=scale)
    weights_dir = weights_dir_from(args.weights_dir)
    spec = {
        "method": cls.name, "backbone": backbone, "scale": scale, "seed": args.seed,
        "model": dataclasses.asdict(config), "recipe": dataclasses.asdict(recipe),
        "protocol": protocol.to_dict(), "protocol_hash": protocol.content_hash(), "miniature": miniature,
        "data_root": str(data_root), "weights_dir": str(weights_dir) if weights_dir else None,
    }
    spec_hash = content_hash(hashed_spec(spec))
    name = f"{cls.name}-{backbone}-{protocol.name}{'-mini' if miniature else ''}-s{args.seed}-{spec_hash[:8]}"
    out = Path(args.out) if args.out else Path("runs") / name
    spec["out"] = str(out)
    return ResolvedRun(cls, backbone, scale, config, recipe, protocol, data_root, miniature, weights_dir,
                       args.seed, out, spec, spec_hash)


def dry_run(run: ResolvedRun) -> dict[str, Any]:
    """Build at real scale on the meta device (no memory, no weights) and report parameter counts."""
    t0 = time.perf_counter()
    with torch.device("meta"):
        method = run.method_class(run.config)
    params = method.parameter_summary()
    return {**run.spec, "spec_hash": run.spec_hash, "params": params,
            "build_seconds_meta": round(time.perf_counter() - t0, 2),
            "pretrained_files": sorted(method.pretrained_loaders())}


# ---------------------------------------------------------------------------------------------- main job
def split_dataset(run: ResolvedRun, split_spec, transform):
    return build_dataset(split_spec.dataset, split_spec.split, run.data_root,
                         mapillary_mapping=split_spec.mapillary_mapping or "robustnet", transform=transform)


def execute(run: ResolvedRun, args: argparse.Namespace, *, log=print) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_start = time.perf_counter()
    torch.manual_seed(run.seed)
    method = run.method_class(run.config)
    weights = method.load_pretrained(run.weights_dir, allow_random_init=run.miniature or args.allow_random_init)
    if not weights["pretrained"]:
        missing = [f for f, s in weights["files"].items() if not s["found"]]
        log("!" * 100)
        log(f"!! NOT PRETRAINED: {', '.join(missing) or 'no official weights for this configuration'} "
            f"{'not found in ' + str(run.weights_dir) if missing else ''}")
        log("!! The backbone is randomly initialised; the result is recorded with pretrained: false.")
        log("!" * 100)
    run.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.out / "spec.json", {**run.spec, "spec_hash": run.spec_hash})

    train_info: dict[str, Any] = {}
    if args.eval_only:
        if args.checkpoint:
            report = method.load_checkpoint(args.checkpoint)
            log(f"loaded {args.checkpoint}: {report.summary()}")
            train_info = {"checkpoint": str(args.checkpoint), "key_report": report.summary()}
    else:
        aug = TrainAugmentation(crop_size=run.recipe.crop_size, **run.recipe.augmentation)
        train_set = split_dataset(run, run.protocol.source, TrainTransform(aug))
        log(f"training {run.method_class.name} ({run.backbone}, {run.scale}) on {run.protocol.source.dataset}/"
            f"{run.protocol.source.split} ({len(train_set)} images) for {run.recipe.iterations} iterations, "
            f"batch {run.recipe.batch_size}, on {device}")
        workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
        trainer = Trainer(method, run.recipe, train_set, out_dir=run.out, seed=run.seed, device=device,
                          spec_hash=run.spec_hash, num_workers=workers, progress=not args.no_progress, log=log)
        result = trainer.run(resume=args.resume)
        train_info = dataclasses.asdict(result)
        if not distributed.is_main():  # DDP: rank 0 alone saves, evaluates and writes the record
            return {}
        torch.save(method.checkpoint_state_dict(), run.out / "model_final.pt")
    method.to(device).eval()

    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    splits = list(run.protocol.targets)
    if not args.no_reference:
        splits.append(run.protocol.reference)
    evaluations = {}
    t_eval = time.perf_counter()
    for split_spec in splits:
        dataset = split_dataset(run, split_spec, TestTransform(split_spec.test_resize))
        evaluations[split_spec.key] = evaluate_split(
            method.predict, dataset, run.protocol.inference, key=split_spec.key, device=device,
            out_dir=run.out / "eval", autocast_dtype=amp_dtype, progress=not args.no_progress)
    eval_seconds = time.perf_counter() - t_eval

    def split_result(ev) -> dict[str, Any]:
        return {"miou": ev.score.miou, "acc": ev.score.acc, "num_images": ev.num_images,
                "per_class_iou": dict(zip(CITYSCAPES_CLASSES, ev.score.per_class_iou)),
                "confusion": os.path.relpath(ev.per_image_path, run.out), "seconds": ev.seconds}

    targets = {s.key: split_result(evaluations[s.key]) for s in run.protocol.targets}
    results: dict[str, Any] = {"targets": targets,
                               "mean_miou": mean_over_targets({k: v["miou"] for k, v in targets.items()})}
    if not args.no_reference:
        ref = split_result(evaluations[run.protocol.reference.key])
        results["reference"] = {"key": run.protocol.reference.key, **ref}
        results["rpd"] = {k: rpd(v["miou"], ref["miou"]) for k, v in targets.items()}
        results["mean_rpd"] = rpd(results["mean_miou"], ref["miou"])
        results["rpd_definition"] = "rPD = 100 * mIoU_target / mIoU_source (decisions.md §1); drop = 100 - rPD"

    record = {
        "schema": RECORD_SCHEMA, "run_id": run.out.name, "created": now_iso(),
        "method": run.method_class.name, "backbone": run.backbone, "protocol": run.protocol.name,
        "eval_variant": run.protocol.variant, "protocol_hash": run.protocol.content_hash(),
        "miniature": run.miniature, "benchmark": "miniature" if run.miniature else "real",
        "seed": run.seed, "pretrained": weights["pretrained"], "weights": weights,
        "spec": run.spec, "spec_hash": run.spec_hash, "params": method.parameter_summary(),
        "environment": environment(str(device)), "train": train_info, "results": results,
        "timings": {"total_s": time.perf_counter() - t_start, "eval_s": eval_seconds,
                    "train_s": train_info.get("seconds")},
    }
    write_json_atomic(run.out / RECORD_FILE, record)
    return record


def summary_table(record: dict[str, Any]) -> str:
    res = record["results"]
    rows = [("target", "mIoU", "rPD")]
    for key, value in res["targets"].items():
        rows.append((key, f"{value['miou']:.2f}", f"{res['rpd'][key]:.1f}" if "rpd" in res else "-"))
    rows.append(("mean", f"{res['mean_miou']:.2f}", f"{res['mean_rpd']:.1f}" if "mean_rpd" in res else "-"))
    if "reference" in res:
        rows.append((f"{res['reference']['key']} (source, rPD ref.)", f"{res['reference']['miou']:.2f}", "100.0"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>7}  {r[2]:>6}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    bench = "MINIATURE benchmark" if record["miniature"] else "real data"
    head = (f"{record['method']} / {record['backbone']} / {record['protocol']} ({record['eval_variant']}, "
            f"hash {record['protocol_hash']}) on {bench}, seed {record['seed']}, "
            f"pretrained: {str(record['pretrained']).lower()}")
    return head + "\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eval_variant not in list_variants(args.protocol):
        raise SystemExit(f"error: protocol {args.protocol} has variants {', '.join(list_variants(args.protocol))}")
    distributed.init_from_environment()  # torchrun / multi-task submitit job: one process per GPU
    with distributed.main_first():  # rank 0 builds caches (miniature benchmark) before the others read them
        run = resolve(args)
    if args.dry_run:
        print(json.dumps(dry_run(run), indent=2, default=str))
        return 0
    record = execute(run, args)
    distributed.cleanup()
    if not record:  # DDP rank > 0: rank 0 reports
        return 0
    print(summary_table(record))
    print(f"result record: {run.out / RECORD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
