"""Train and evaluate one method on one protocol: ``python -m runners.run --method M --protocol P``.

Without a data root (``--data-root`` / ``$DGSS_DATA_ROOT``) the run uses the built-in miniature benchmark
and the method's CPU-sized configuration; with one, the paper recipe at real scale. Every run writes a
result record (``<out>/result.json``) with the full resolved spec and the fingerprints of the dataset splits
it used (``datasets``: ``{"<dataset>/<split>": fingerprint}``, see ``datasets.fingerprint``). ``--export``
also writes the predictions of the protocol's export splits (ACDC test) in the server's submission format.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.evaluate import evaluate_split
from benchmarks.export import check_submission, export_predictions, zip_submission
from benchmarks.metrics import classes_subset_miou, mean_over_targets, rpd
from benchmarks.protocols import (Protocol, SplitSpec, build_test_transform, get_protocol, list_protocols,
                                  list_variants, load_split)
from datasets.base import ConcatSegmentationDataset
from datasets.fingerprint import dataset_fingerprints
from datasets.sampling import RareClassCropDataset, RareClassSampler, RareClassSampling, RareClassStats
from datasets.labels import CITYSCAPES_CLASSES
from datasets.miniature import ensure_miniature, is_miniature_root
from datasets.transforms import TrainAugmentation, TrainTransform
from methods.base import Method, TrainRecipe
from methods.miniature_weights import MiniatureWeightsError, miniature_weights_dir, miniature_weights_sha256
from methods.backbones.vit import set_grad_checkpointing
from methods.registry import get_method_class, list_methods
from methods.weights import default_hash_cache, weights_dir_from
from runners.records import RECORD_FILE, RECORD_SCHEMA, content_hash, environment, now_iso, write_json_atomic
from runners import distributed
from runners.train import Trainer

DATA_ROOT_ENV = "DGSS_DATA_ROOT"
PATH_KEYS = ("data_root", "weights_dir", "out", "datasets")  # machine/data-specific: not part of the spec hash
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
    parser.add_argument("--random-init", action="store_true",
                        help="load no pretrained files (the random-initialisation baseline; on the miniature "
                             "benchmark the shipped stand-ins are skipped)")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<run name>)")
    parser.add_argument("--resume", action="store_true", help="resume from <out>/checkpoints/last.pt")
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="weights to evaluate with --eval-only")
    parser.add_argument("--no-reference", action="store_true", help="skip the rPD reference split")
    parser.add_argument("--export", action="store_true",
                        help="also write the predictions of the protocol's export splits (e.g. ACDC test) in the "
                             "server's submission format to <out>/export/<key>/ (+ .zip); with --eval-only "
                             "--checkpoint CKPT this exports a trained model")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data loader workers for training and evaluation (default on CUDA: "
                             "min(12, cores per process - 2); 0 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training step (measure first: python -m benchmarks.speed --compile)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="activation checkpointing of the ViT blocks (less memory, ~1/3 more compute); "
                             "does not change results or the run's spec hash")
    parser.add_argument("--eval-batch-windows", type=int, default=None,
                        help="sliding windows per forward pass in evaluation (default 8 on CUDA, 1 on CPU)")
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
    protocol = with_source_splits(get_protocol(args.protocol, miniature=miniature, variant=args.eval_variant),
                                  recipe.gta_split)
    config = cls.config_for_source(cls.default_config(backbone, scale=scale), source)
    weights_dir = None if args.random_init else weights_dir_from(args.weights_dir)
    shipped: dict[str, str] = {}
    if miniature and not args.random_init and not args.weights_dir:
        # the miniature foundation models shipped with the package stand in for the official files
        try:
            weights_dir, shipped = miniature_weights_dir(), miniature_weights_sha256()
        except MiniatureWeightsError as err:
            raise SystemExit(f"error: {err}") from None
    spec = {
        "method": cls.name, "backbone": backbone, "scale": scale, "seed": args.seed,
        "model": dataclasses.asdict(config), "recipe": recipe_dict(recipe),
        "protocol": protocol.to_dict(), "protocol_hash": protocol.content_hash(), "miniature": miniature,
        "data_root": str(data_root), "weights_dir": str(weights_dir) if weights_dir else None,
    }
    if miniature:
        # which miniature benchmark (generator version and parameters) is part of the run's identity
        manifest = json.loads((data_root / "MINIATURE.json").read_text())
        spec["miniature_benchmark"] = {k: manifest.get(k) for k in ("version", "params", "param_hash")}
        spec["miniature_weights"] = shipped  # {file: sha256} of the shipped stand-ins ({} when not used)
    if args.random_init:
        spec["random_init"] = True
    spec_hash = content_hash(hashed_spec(spec))
    name = f"{cls.name}-{backbone}-{protocol.name}{'-mini' if miniature else ''}-s{args.seed}-{spec_hash[:8]}"
    out = Path(args.out) if args.out else Path("runs") / name
    spec["out"] = str(out)
    return ResolvedRun(cls, backbone, scale, config, recipe, protocol, data_root, miniature, weights_dir,
                       args.seed, out, spec, spec_hash)


def with_source_splits(protocol: Protocol, gta_split: str) -> Protocol:
    """The recipe's synthetic-source split (decisions.md §5: "all" or the RobustNet "train" list) for every
    GTA5 source, and for SYNTHIA sources when it is "all" or "train" (tqdm/FAMix use both RobustNet lists)."""
    def fix(s: SplitSpec) -> SplitSpec:
        if s.dataset == "gta5" or (s.dataset == "synthia" and gta_split in ("all", "train")):
            return dataclasses.replace(s, split=gta_split)
        return s
    return dataclasses.replace(protocol, source=fix(protocol.source),
                               extra_sources=tuple(fix(s) for s in protocol.extra_sources))


def recipe_dict(recipe: TrainRecipe) -> dict[str, Any]:
    """The recipe for the spec; ``rare_class_sampling`` is left out when off, so specs (and their hashes)
    of recipes without it are unchanged."""
    d = dataclasses.asdict(recipe)
    if d.get("rare_class_sampling") is None:
        d.pop("rare_class_sampling", None)
    return d


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
    return load_split(split_spec, run.data_root, transform)


def training_dataset(run: ResolvedRun, transform):
    """The protocol's training split(s): one dataset, or GTA5 + SYNTHIA read as one."""
    parts = [split_dataset(run, s, transform) for s in run.protocol.sources]
    return parts[0] if len(parts) == 1 else ConcatSegmentationDataset(parts)


def data_fingerprints(run: ResolvedRun, args: argparse.Namespace, log=None) -> dict[str, str]:
    """``{"<dataset>/<split>": fingerprint}`` of every split this run reads (datasets.fingerprint)."""
    splits = [] if args.eval_only else list(run.protocol.sources)
    splits += list(run.protocol.targets) + ([] if args.no_reference else [run.protocol.reference])
    splits += list(run.protocol.exports) if args.export else []
    return dataset_fingerprints([(s.dataset, s.split) for s in splits], run.data_root, log=log)


def rare_class_setup(run: ResolvedRun, train_set, log=print):
    """(dataset, sampler factory, record info) for the recipe's rare-class sampling, or the dataset unchanged."""
    if not run.recipe.rare_class_sampling:
        return train_set, None, None
    config = RareClassSampling.from_dict(run.recipe.rare_class_sampling)
    with distributed.main_first():  # rank 0 counts the class pixels and caches them; the others read the cache
        stats = RareClassStats.from_dataset(train_set, config, log=log)
    info = {"config": config.to_dict(), "class_probabilities": {CITYSCAPES_CLASSES[c]: round(p, 6) for c, p in
                                                                stats.class_probabilities().items()}}
    log(f"rare-class sampling (T={config.class_temp}): {len(stats.classes)} classes can be drawn")
    return RareClassCropDataset(train_set, config), functools.partial(RareClassSampler, stats), info


def split_result(run: ResolvedRun, ev, split_spec: SplitSpec) -> dict[str, Any]:
    """Scores of one split; ``miou`` is over the split's reported classes (19, or 16/13 for the SYNTHIA
    conventions, then ``miou_19`` keeps the 19-class value)."""
    out = {"miou": ev.score.miou, "acc": ev.score.acc, "num_images": ev.num_images,
           "per_class_iou": dict(zip(CITYSCAPES_CLASSES, ev.score.per_class_iou)),
           "confusion": os.path.relpath(ev.per_image_path, run.out), "seconds": ev.seconds,
           "num_classes": len(split_spec.reported_classes)}
    if len(split_spec.reported_classes) != len(CITYSCAPES_CLASSES):
        out["miou"] = classes_subset_miou(ev.confusion, split_spec.reported_classes)
        out["miou_19"] = ev.score.miou
        out["classes_reported"] = [CITYSCAPES_CLASSES[c] for c in split_spec.reported_classes]
    return out


def export_splits(run: ResolvedRun, method, device, amp_dtype, progress: bool, log=print) -> dict[str, Any]:
    """Write the protocol's export splits (benchmarks.export) and zip each; returns the record entry."""
    out: dict[str, Any] = {}
    if not run.protocol.exports:
        log(f"--export: protocol {run.protocol.name} has no export splits; nothing written")
    for s in run.protocol.exports:
        folder = run.out / "export" / s.key
        dataset = split_dataset(run, s, build_test_transform(s))
        res = export_predictions(method.predict, dataset, run.protocol.inference, folder, key=s.key, device=device,
                                 autocast_dtype=amp_dtype, progress=progress)
        problems = check_submission(folder, dataset, id_format=res.id_format, decode=False)
        if problems:
            raise RuntimeError(f"export {s.key} in {folder} is incomplete: " + "; ".join(problems))
        archive = zip_submission(folder)
        out[s.key] = {"dir": os.path.relpath(folder, run.out), "zip": os.path.relpath(archive, run.out),
                      "num_images": res.num_images, "id_format": res.id_format,
                      "dataset": f"{s.dataset}/{s.split}"}
        log(f"exported {res.num_images} {s.key} predictions ({res.id_format}) to {archive}")
    return out


def default_workers(device: torch.device) -> int:
    """Data loader workers when --workers is not given: none on a CPU; on CUDA min(12, cores per process - 2),
    leaving cores to the training process. Rein's GTA pipeline (PNG decode dominates) costs ~90 ms per sample
    on one core of a 2-core machine, so 90 img/s needs ~8 busy workers: check with
    ``python -m benchmarks.speed --method M --data``."""
    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 2) // max(1, distributed.info().world_size)
    return max(1, min(12, per_process - 2))


def eval_batch_windows(args: argparse.Namespace, device: torch.device) -> int:
    """Sliding windows per forward pass: 8 on CUDA (same scores as 1 up to float rounding), 1 on a CPU."""
    value = getattr(args, "eval_batch_windows", None)
    return int(value) if value else (8 if device.type == "cuda" else 1)


def execute(run: ResolvedRun, args: argparse.Namespace, *, log=print) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_start = time.perf_counter()
    torch.manual_seed(run.seed)
    method = run.method_class(run.config)
    weights = method.load_pretrained(run.weights_dir, allow_random_init=run.miniature or args.allow_random_init
                                     or args.random_init)
    shipped = run.spec.get("miniature_weights") or {}
    for file, status in weights["files"].items():
        if status["found"] and file in shipped:
            status["sha256"] = shipped[file]
    if not weights["pretrained"]:
        missing = [f for f, s in weights["files"].items() if not s["found"]]
        log("!" * 100)
        log(f"!! NOT PRETRAINED: {', '.join(missing) or 'no official weights for this configuration'} "
            f"{'not found in ' + str(run.weights_dir) if missing else ''}")
        log("!! The backbone is randomly initialised; the result is recorded with pretrained: false.")
        log("!" * 100)
    with distributed.main_first():  # fingerprints also catch missing/partial splits before any GPU time
        fingerprints = data_fingerprints(run, args, log)
    run.spec["datasets"] = fingerprints
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
        train_set = training_dataset(run, TrainTransform(aug))
        log(f"training {run.method_class.name} ({run.backbone}, {run.scale}) on {train_set.name}/"
            f"{train_set.split} ({len(train_set)} images) for {run.recipe.iterations} iterations, "
            f"batch {run.recipe.batch_size}, on {device}")
        with distributed.main_first():  # e.g. FAMix's style mining: rank 0 fills the cache, the others read it
            prepared = method.prepare(train_set, default_hash_cache().parent, log, seed=run.seed, device=device)
        workers = args.workers if args.workers is not None else default_workers(device)
        if getattr(args, "grad_checkpointing", False):
            set_grad_checkpointing(method, True)
        train_set, sampler_factory, rcs_info = rare_class_setup(run, train_set, log)
        trainer = Trainer(method, run.recipe, train_set, out_dir=run.out, seed=run.seed, device=device,
                          spec_hash=run.spec_hash, num_workers=workers, progress=not args.no_progress, log=log,
                          sampler_factory=sampler_factory, compile=getattr(args, "compile", False))
        result = trainer.run(resume=args.resume)
        train_info = dataclasses.asdict(result)
        if rcs_info:
            train_info["rare_class_sampling"] = rcs_info
        if prepared:
            train_info["prepare"] = prepared
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
        dataset = split_dataset(run, split_spec, build_test_transform(split_spec))
        evaluations[split_spec.key] = evaluate_split(
            method.predict, dataset, run.protocol.inference, key=split_spec.key, device=device,
            out_dir=run.out / "eval", autocast_dtype=amp_dtype, progress=not args.no_progress,
            batch_windows=eval_batch_windows(args, device),
            num_workers=args.workers if getattr(args, "workers", None) is not None else default_workers(device))
    eval_seconds = time.perf_counter() - t_eval

    targets = {s.key: split_result(run, evaluations[s.key], s) for s in run.protocol.targets}
    results: dict[str, Any] = {"targets": targets,
                               "mean_miou": mean_over_targets({k: v["miou"] for k, v in targets.items()})}
    if not args.no_reference:
        ref = split_result(run, evaluations[run.protocol.reference.key], run.protocol.reference)
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
        "datasets": fingerprints,
        "timings": {"total_s": time.perf_counter() - t_start, "eval_s": eval_seconds,
                    "train_s": train_info.get("seconds")},
    }
    write_json_atomic(run.out / RECORD_FILE, record)
    if args.export:  # after the scores are safely written
        record["exports"] = export_splits(run, method, device, amp_dtype, not args.no_progress, log)
        write_json_atomic(run.out / RECORD_FILE, record)
    return record


def summary_table(record: dict[str, Any]) -> str:
    res = record["results"]
    rows = [("target", "mIoU", "rPD")]
    for key, value in res["targets"].items():
        classes = f" [{value['num_classes']} cls]" if value.get("num_classes", 19) != 19 else ""
        rows.append((key + classes, f"{value['miou']:.2f}", f"{res['rpd'][key]:.1f}" if "rpd" in res else "-"))
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
