"""Train and evaluate one method on one protocol: ``python -m runners.run --method M --protocol P``.

Without a data root (``--data-root`` / ``$DGSS_DATA_ROOT``) the run uses the built-in miniature benchmark
and the method's CPU-sized configuration; with one, the paper recipe at real scale. Every run writes a
result record (``<out>/result.json``) with the full resolved spec and the fingerprints of the dataset splits
it used (``datasets``: ``{"<dataset>/<split>": fingerprint}``, see ``datasets.fingerprint``). ``--export``
also writes the predictions of the protocol's export splits (ACDC test) in the server's submission format.

Before any model is built, ``runners.preflight`` checks weights, checkpoint, data and the output folder, and
``runners.outdir`` guards the run folder (one live run, finished runs skipped, started runs resumed only with
``--resume``). Mistakes are one line with exit code 2. Heavy modules (torch, the methods) are imported after
the arguments are parsed, so ``--help`` and argument errors answer at once. ``--released ID`` evaluates a
checkpoint of :mod:`methods.released` from the weights folder (its identity is part of the spec hash).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

# light imports only (no torch): heavy ones are inside the functions that run after argument parsing
from benchmarks.numerics import PRECISIONS
from benchmarks.protocols import (Protocol, SplitSpec, build_test_transform, get_protocol, list_protocols,
                                  list_variants, load_split)
from methods.registry import get_method_class, method_module_names
from runners.interrupt import StopRequest
from runners.outdir import check_run_folder, open_run_folder
from runners.preflight import RunInterrupted, UserError, disk_full_error, is_disk_full, preflight, report_error
from runners.records import RECORD_FILE, RECORD_SCHEMA, content_hash, environment, now_iso, write_json_atomic
from runners.options import apply_overrides, parse_cfg_options
from runners.loggers import LOGGERS, build_logger, logger_problem
from runners.profiles import (DEFAULT_PROFILE, HARMONISED_RUN, NOTES, PROFILES, eval_variant_for,
                              format_profile_differences, method_recipe, profile_differences, settings_for)

if TYPE_CHECKING:
    import torch

    from benchmarks.numerics import Numerics
    from methods.base import Method, TrainRecipe

DATA_ROOT_ENV = "DGSS_DATA_ROOT"
PATH_KEYS = ("data_root", "weights_dir", "out", "datasets")  # machine/data-specific: not part of the spec hash
NEUTRAL_SPEC = {"profile": DEFAULT_PROFILE, "precision": HARMONISED_RUN["precision"], "cfg_options": []}
"""Spec keys added after the first records: left out of the hash at these values, so the hashes of earlier
harmonised runs (and their finished sweep cells) stay valid."""
OPTIONAL_RECIPE_KEYS = {"rare_class_sampling": None, "select_interval": 0, "poly_convention": "mmcv"}
"""Recipe fields left out of the spec at these values (added after the first records)."""
BOOKKEEPING_RECIPE_KEYS = ("checkpoint_interval", "log_interval", "source")  # do not change results


def build_parser() -> argparse.ArgumentParser:
    methods, protocols = method_module_names(), list_protocols()
    parser = argparse.ArgumentParser(
        prog="python -m runners.run",
        description="Train and evaluate a DGSS method on a protocol.\n\n"
                    f"methods:   {', '.join(methods)}\nprotocols: {', '.join(protocols)}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", required=True, choices=methods)
    parser.add_argument("--protocol", default="gta2cbm", choices=protocols)
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES,
                        help="harmonised (default: comparable across methods) or released (what each official "
                             "repository does: its seed, precision, evaluation variant and quirks; --dry-run "
                             "lists them with their official file:line)")
    parser.add_argument("--eval-variant", default=None,
                        help="named evaluation variant of the protocol (e.g. rein, tqdm); default: the profile's "
                             "(harmonised: default; released: the paper's)")
    parser.add_argument("--backbone", default=None, help="backbone name (default: the method's paper backbone)")
    parser.add_argument("--seed", type=int, default=None, help="default: the profile's (harmonised 0; released: "
                                                               "the official code's)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="bf16 (autocast), tf32 or fp32 on a GPU; default: the profile's (harmonised bf16, "
                             "released fp32). CPU runs are float32 whatever this says")
    parser.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override method-config or recipe fields, e.g. model.head.num_queries=50 "
                             "recipe.iterations=100 (typed; an unknown key lists the valid ones)")
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
    parser.add_argument("--resume", action="store_true",
                        help="continue a started run in <out>: training from checkpoints/last.pt, evaluation "
                             "from the per-image confusion files already written")
    parser.add_argument("--force", action="store_true",
                        help="run again in a folder with a finished or started run; its files are moved to "
                             "<out>/superseded/<time>/, never deleted")
    parser.add_argument("--eval-only", action="store_true", help="skip training; evaluate --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="weights to evaluate with --eval-only")
    parser.add_argument("--released", default=None, metavar="ID",
                        help="evaluate the released checkpoint ID (python -m runners.released list) from the weights "
                             "folder; implies --eval-only")
    parser.add_argument("--eval-untrained", action="store_true",
                        help="with --eval-only and no --checkpoint: evaluate the untrained model on purpose")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    parser.add_argument("--no-reference", action="store_true", help="skip the rPD reference split")
    parser.add_argument("--export", action="store_true",
                        help="also write the predictions of the protocol's export splits (e.g. ACDC test) in the "
                             "server's submission format to <out>/export/<key>/ (+ .zip); with --eval-only "
                             "--checkpoint CKPT this exports a trained model")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data loader workers for training and evaluation (default on CUDA: twice the "
                             "method's measured need, README Performance; 0 on CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training step (measure first: python -m runners.speed --compile)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="activation checkpointing of the ViT blocks (less memory, ~1/3 more compute); "
                             "does not change results or the run's spec hash")
    parser.add_argument("--eval-batch-windows", type=int, default=None,
                        help="sliding windows per forward pass in evaluation (default 8 on CUDA, 1 on CPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model at real scale on the meta device, print the resolved spec and exit")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars, even on a terminal (bars are only drawn on a terminal; otherwise, "
                             "e.g. in Slurm logs, a plain line every --log-interval iterations)")
    parser.add_argument("--logger", default="tensorboard", choices=LOGGERS,
                        help="mirror losses, LRs, grad norm, it/s and evaluation mIoU to TensorBoard "
                             "(<out>/tensorboard) or offline W&B (needs wandb); default: %(default)s")
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
    profile: str = DEFAULT_PROFILE
    precision: str = HARMONISED_RUN["precision"]
    notes: tuple[str, ...] = ()  # official-code findings of the profile (printed and recorded)


def resolve_released(args: argparse.Namespace, method: str, backbone: str, weights_dir: Path | None) -> dict[str, Any]:
    """``--released ID``: the registry entry's identity for the spec; sets ``--eval-only --checkpoint``."""
    from methods.released import get_released
    from methods.weights import cached_sha256, default_hash_cache

    try:
        entry = get_released(args.released)
    except KeyError as err:
        raise UserError(str(err.args[0]), "--released", "python -m runners.released list names them") from None
    if args.checkpoint:
        raise UserError("--released and --checkpoint name two checkpoints", "--released", "pass one of them")
    if (entry.method, entry.backbone) != (method, backbone):
        raise UserError(f"--released {entry.id} is a {entry.method} / {entry.backbone} checkpoint", "--released",
                        f"pass --method {entry.method} --backbone {entry.backbone}")
    path = entry.locate(weights_dir)
    if path is None and not args.dry_run:
        where = Path(weights_dir or "<weights-dir>") / entry.path
        raise UserError(f"released checkpoint {entry.id} not found", where,
                        f"download {entry.url} to that path (--weights-dir or $DGSS_WEIGHTS)")
    if path is not None and entry.sha256 and cached_sha256(path, default_hash_cache()) != entry.sha256:
        raise UserError(f"the file does not have the published sha256 {entry.sha256[:16]}...", path,
                        f"download it again from {entry.url}")
    args.eval_only, args.checkpoint = True, str(path) if path else None
    return {"id": entry.id, "file": entry.file, "sha256_published": entry.sha256,
            "reported_lines": list(entry.reported_lines)}


def hashed_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec that identifies a run: no machine paths, no logging/checkpoint cadence."""
    out = {k: v for k, v in spec.items() if k not in PATH_KEYS and not (k in NEUTRAL_SPEC and v == NEUTRAL_SPEC[k])}
    out["recipe"] = {k: v for k, v in spec["recipe"].items() if k not in BOOKKEEPING_RECIPE_KEYS}
    return out


def resolve(args: argparse.Namespace, *, log=print) -> ResolvedRun:
    from datasets.miniature import ensure_miniature, is_miniature_root
    from methods.weights import weights_dir_from

    cls = get_method_class(args.method)
    backbone = args.backbone or cls.backbones[0]
    if backbone not in cls.backbones:
        raise UserError(f"{cls.name} has no backbone {backbone!r}", "--backbone",
                        f"use one of {', '.join(cls.backbones)}")
    data_root_arg = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if args.dry_run:
        miniature, data_root = False, Path(data_root_arg) if data_root_arg else Path("<data-root>")
    elif data_root_arg:
        data_root = Path(data_root_arg)
        miniature = is_miniature_root(data_root)
        if not data_root.is_dir():
            raise UserError("the data root does not exist", data_root,
                            f"pass the folder of the datasets with --data-root (or ${DATA_ROOT_ENV}); without "
                            "both, the built-in miniature benchmark runs")
    else:
        data_root = ensure_miniature()
        miniature = True
        log(f"No data root given (--data-root / ${DATA_ROOT_ENV}): running the built-in miniature benchmark "
            f"from {data_root}; results are labelled miniature and never mixed with real-data results.")
    scale = "miniature" if miniature else "paper"
    source = get_protocol(args.protocol).source.dataset
    profile = getattr(args, "profile", None) or DEFAULT_PROFILE
    recipe, recipe_origin = method_recipe(cls, source, scale, backbone, log)
    config = cls.config_for_source(cls.default_config(backbone, scale=scale), source)
    settings = settings_for(profile, cls.name, source)
    run_values = {**HARMONISED_RUN, **{s.key[4:]: s.value for s in settings if s.key.startswith("run.")}}
    config, recipe = apply_overrides(config, recipe, [(s.key, s.value, None) for s in settings
                                                      if not s.key.startswith("run.")])
    recipe = recipe.replace(iterations=args.iters, batch_size=args.batch_size, lr=args.lr,
                            checkpoint_interval=args.checkpoint_interval, log_interval=args.log_interval)
    cfg_options = parse_cfg_options(getattr(args, "cfg_options", None))
    config, recipe = apply_overrides(config, recipe, cfg_options)
    variant = eval_variant_for(args.protocol, args.eval_variant, run_values["eval_variant"], recipe, log)
    protocol = with_source_splits(get_protocol(args.protocol, miniature=miniature, variant=variant),
                                  recipe.gta_split)
    seed = args.seed if args.seed is not None else run_values["seed"]
    precision = getattr(args, "precision", None) or run_values["precision"]
    weights_dir = None if args.random_init else weights_dir_from(args.weights_dir)
    shipped: dict[str, str] = {}
    if miniature and not args.random_init and not args.weights_dir:
        # the miniature foundation models shipped with the package stand in for the official files
        from methods.miniature_weights import MiniatureWeightsError, miniature_weights_dir, miniature_weights_sha256

        try:
            weights_dir, shipped = miniature_weights_dir(), miniature_weights_sha256()
        except MiniatureWeightsError as err:
            raise UserError(str(err)) from None
        # only the stand-ins this config loads are part of its identity (a retrained DA file re-keys vireo only)
        shipped = {file: digest for file, digest in shipped.items() if file in cls.pretrained_files(config)}
    spec = {
        "method": cls.name, "backbone": backbone, "scale": scale, "seed": seed,
        "model": dataclasses.asdict(config), "recipe": recipe_dict(recipe),
        "protocol": protocol.to_dict(), "protocol_hash": protocol.content_hash(), "miniature": miniature,
        "data_root": str(data_root), "weights_dir": str(weights_dir) if weights_dir else None,
        "profile": profile, "precision": precision, "cfg_options": [f"{k}={t}" for k, _, t in cfg_options],
    }
    if recipe_origin:
        spec["recipe_origin"] = recipe_origin
    released = resolve_released(args, cls.name, backbone, weights_dir) if getattr(args, "released", None) else None
    if released:
        spec["released_checkpoint"] = released
    if miniature:
        # which miniature benchmark (generator version and parameters) is part of the run's identity
        manifest = json.loads((data_root / "MINIATURE.json").read_text())
        spec["miniature_benchmark"] = {k: manifest.get(k) for k in ("version", "params", "param_hash")}
        spec["miniature_weights"] = shipped  # {file: sha256} of the shipped stand-ins ({} when not used)
    if args.random_init:
        spec["random_init"] = True
    spec_hash = content_hash(hashed_spec(spec))
    tag = "" if profile == DEFAULT_PROFILE else f"-{profile}"
    mini = "-mini" if miniature else ""
    name = (f"released-{released['id']}-{protocol.name}-{protocol.variant}{mini}{tag}-{spec_hash[:8]}" if released
            else f"{cls.name}-{backbone}-{protocol.name}{mini}{tag}-s{seed}-{spec_hash[:8]}")
    out = Path(args.out) if args.out else Path("runs") / name
    spec["out"] = str(out)
    notes = NOTES.get(cls.name, ()) if profile == "released" else ()
    for note in notes:
        log(f"warning: {cls.name} released profile: {note}")
    return ResolvedRun(cls, backbone, scale, config, recipe, protocol, data_root, miniature, weights_dir,
                       seed, out, spec, spec_hash, profile, precision, tuple(notes))


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
    """The recipe for the spec; the fields of :data:`OPTIONAL_RECIPE_KEYS` are left out when off, so specs
    (and their hashes) of recipes without them are unchanged."""
    d = dataclasses.asdict(recipe)
    for key, off in OPTIONAL_RECIPE_KEYS.items():
        if d.get(key, off) == off:
            d.pop(key, None)
    return d


def dry_run(run: ResolvedRun) -> dict[str, Any]:
    """Build at real scale on the meta device (no memory, no weights) and report parameter counts."""
    import torch

    t0 = time.perf_counter()
    with torch.device("meta"):
        method = run.method_class(run.config)
    params = method.parameter_summary()
    return {**run.spec, "spec_hash": run.spec_hash, "params": params,
            "build_seconds_meta": round(time.perf_counter() - t0, 2),
            "pretrained_files": sorted(method.pretrained_loaders()),
            "profile_differences": profile_differences(run.method_class.name, run.protocol.source.dataset,
                                                       run.backbone, run.scale),
            "profile_notes": list(NOTES.get(run.method_class.name, ()))}


# ---------------------------------------------------------------------------------------------- main job
def split_dataset(run: ResolvedRun, split_spec, transform):
    return load_split(split_spec, run.data_root, transform)


def training_dataset(run: ResolvedRun, transform):
    """The protocol's training split(s): one dataset, or GTA5 + SYNTHIA read as one."""
    from datasets.base import ConcatSegmentationDataset

    parts = [split_dataset(run, s, transform) for s in run.protocol.sources]
    return parts[0] if len(parts) == 1 else ConcatSegmentationDataset(parts)


def data_fingerprints(run: ResolvedRun, args: argparse.Namespace, log=None) -> dict[str, str]:
    """``{"<dataset>/<split>": fingerprint}`` of every split this run reads (datasets.fingerprint)."""
    from datasets.fingerprint import dataset_fingerprints

    splits = [] if args.eval_only else list(run.protocol.sources)
    splits += list(run.protocol.targets) + ([] if args.no_reference else [run.protocol.reference])
    splits += list(run.protocol.exports) if args.export else []
    return dataset_fingerprints([(s.dataset, s.split) for s in splits], run.data_root, log=log)


def rare_class_setup(run: ResolvedRun, train_set, log=print):
    """(dataset, sampler factory, record info) for the recipe's rare-class sampling, or the dataset unchanged."""
    from datasets.labels import CITYSCAPES_CLASSES
    from datasets.sampling import RareClassCropDataset, RareClassSampler, RareClassSampling, RareClassStats
    from runners import distributed

    if not run.recipe.rare_class_sampling:
        return train_set, None, None
    config = RareClassSampling.from_dict(run.recipe.rare_class_sampling)
    with distributed.main_first():  # rank 0 counts the class pixels and caches them; the others read the cache
        stats = RareClassStats.from_dataset(train_set, config, log=log)
    info = {"config": config.to_dict(), "class_probabilities": {CITYSCAPES_CLASSES[c]: round(p, 6) for c, p in
                                                                stats.class_probabilities().items()}}
    log(f"rare-class sampling (T={config.class_temp}): {len(stats.classes)} classes can be drawn")
    return RareClassCropDataset(train_set, config), functools.partial(RareClassSampler, stats), info


def split_result(run: ResolvedRun, ev, split_spec: SplitSpec, gallery: Sequence[str] = ()) -> dict[str, Any]:
    """Scores of one split; ``miou`` is over the split's reported classes (19, or 16/13 for the SYNTHIA
    conventions, then ``miou_19`` keeps the 19-class value); ``gallery``: the saved gallery images."""
    from benchmarks.metrics import classes_subset_miou
    from benchmarks.predictions import PREDICTIONS_DIR, selected_present
    from datasets.labels import CITYSCAPES_CLASSES

    out = {"miou": ev.score.miou, "acc": ev.score.acc, "num_images": ev.num_images,
           "per_class_iou": dict(zip(CITYSCAPES_CLASSES, ev.score.per_class_iou)),
           "confusion": os.path.relpath(ev.per_image_path, run.out), "seconds": ev.seconds,
           "num_classes": len(split_spec.reported_classes)}
    gallery_dir = run.out / PREDICTIONS_DIR / split_spec.key
    shown = selected_present(gallery_dir, gallery)
    if shown:  # the protocol's gallery images (benchmarks.predictions), in gallery order
        out["gallery"] = {"dir": os.path.relpath(gallery_dir, run.out), "images": shown}
    if len(split_spec.reported_classes) != len(CITYSCAPES_CLASSES):
        out["miou"] = classes_subset_miou(ev.confusion, split_spec.reported_classes)
        out["miou_19"] = ev.score.miou
        out["classes_reported"] = [CITYSCAPES_CLASSES[c] for c in split_spec.reported_classes]
    return out


def gallery_names(run: ResolvedRun, split_spec: SplitSpec, dataset) -> list[str]:
    """The protocol's gallery images of a target split (none for the rPD reference)."""
    from benchmarks.predictions import split_image_names

    if split_spec not in run.protocol.targets:
        return []
    return run.protocol.gallery.select(split_image_names(dataset) or [], split_spec.key)


def export_splits(run: ResolvedRun, method, device, numerics, progress: bool, log=print) -> dict[str, Any]:
    """Write the protocol's export splits (benchmarks.export) and zip each; returns the record entry."""
    from benchmarks.export import check_submission, export_predictions, zip_submission

    out: dict[str, Any] = {}
    if not run.protocol.exports:
        log(f"--export: protocol {run.protocol.name} has no export splits; nothing written")
    for s in run.protocol.exports:
        folder = run.out / "export" / s.key
        dataset = split_dataset(run, s, build_test_transform(s))
        res = export_predictions(method.predict, dataset, run.protocol.inference, folder, key=s.key, device=device,
                                 numerics=numerics, progress=progress)
        problems = check_submission(folder, dataset, id_format=res.id_format, decode=False)
        if problems:
            raise RuntimeError(f"export {s.key} in {folder} is incomplete: " + "; ".join(problems))
        archive = zip_submission(folder)
        out[s.key] = {"dir": os.path.relpath(folder, run.out), "zip": os.path.relpath(archive, run.out),
                      "num_images": res.num_images, "id_format": res.id_format,
                      "dataset": f"{s.dataset}/{s.split}"}
        log(f"exported {res.num_images} {s.key} predictions ({res.id_format}) to {archive}")
    return out


LOADER_WORKERS_PER_GPU: dict[str, int] = {"rein": 4, "set": 4, "vireo": 4, "tqdm": 2, "vltseg": 2}
"""Loader workers one GPU needs at the method's target speed (README, Performance): ceil(target img/s x CPU
seconds per GTA5 training sample), the cost measured by ``python -m runners.speed --data`` (about 40 ms)."""


def default_workers(device: torch.device, method: str | None = None) -> int:
    """Data loader workers when --workers is not given: none on a CPU; on CUDA twice the method's measured need
    (:data:`LOADER_WORKERS_PER_GPU`, 4 when it has no target; the headroom covers slower cores and the heavier
    test images, e.g. ~100 ms per Mapillary image), at most the cores per process minus one."""
    from runners import distributed

    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 2) // max(1, distributed.info().world_size)
    return max(1, min(2 * LOADER_WORKERS_PER_GPU.get(method or "", 4), per_process - 1))


def eval_batch_windows(args: argparse.Namespace, device: torch.device) -> int:
    """Sliding windows per forward pass: 8 on CUDA (same scores as 1 up to float rounding), 1 on a CPU."""
    value = getattr(args, "eval_batch_windows", None)
    return int(value) if value else (8 if device.type == "cuda" else 1)


def selection_scorer(run: ResolvedRun, method: Method, device: torch.device, numerics: Numerics,
                     args: argparse.Namespace, log=print):
    """``score(iteration) -> mIoU`` on the protocol's source validation split (the rPD reference), for the
    recipe's checkpoint selection (``select_interval``); per-image results under ``<out>/selection``."""
    from benchmarks.evaluate import evaluate_split

    split = run.protocol.reference
    dataset = split_dataset(run, split, build_test_transform(split))

    def score(iteration: int) -> float:
        was_training = method.training
        method.eval()
        ev = evaluate_split(method.predict, dataset, run.protocol.inference, key=f"{split.key}-it{iteration}",
                            device=device, out_dir=run.out / "selection", numerics=numerics,
                            progress=False, batch_windows=eval_batch_windows(args, device))
        method.train(was_training)
        miou = split_result(run, ev, split)["miou"]
        log(f"selection: iteration {iteration}: {split.key} mIoU {miou:.2f}")
        return miou

    return score


def show_bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal (Slurm logs get plain lines) and never with --no-progress."""
    return not args.no_progress and sys.stderr.isatty()


def execute(run: ResolvedRun, args: argparse.Namespace, *, log=print,
            stop: StopRequest | None = None) -> dict[str, Any]:
    """Build, load, train (stoppable at iteration boundaries through ``stop``), evaluate, write the record."""
    import torch

    from benchmarks.evaluate import evaluate_split
    from benchmarks.metrics import mean_over_targets, rpd
    from benchmarks.numerics import configure_numerics
    from benchmarks.predictions import PREDICTIONS_DIR
    from datasets.transforms import TrainAugmentation, TrainTransform
    from methods.backbones.vit import set_grad_checkpointing
    from methods.weights import cached_sha256, default_hash_cache
    from runners import distributed
    from runners.train import Trainer, atomic_torch_save

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_start = time.perf_counter()
    numerics = configure_numerics(run.precision, device)
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
        if args.random_init:
            log(f"!! NOT PRETRAINED: --random-init, {', '.join(missing) or 'no weights file'} not loaded")
        else:
            log(f"!! NOT PRETRAINED: {', '.join(missing) or 'no official weights for this configuration'} "
                f"{'not found in ' + str(run.weights_dir) if missing else ''}")
        log("!! The backbone is randomly initialised; the result is recorded with pretrained: false.")
        log("!" * 100)
    with distributed.main_first():  # fingerprints also catch missing/partial splits before any GPU time
        fingerprints = data_fingerprints(run, args, log)
    run.spec["datasets"] = fingerprints
    run.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.out / "spec.json", {**run.spec, "spec_hash": run.spec_hash})

    logger = build_logger(getattr(args, "logger", "none") if distributed.is_main() else "none", run.out,
                          name=run.out.name, config=run.spec, run_id=run.spec_hash)
    train_info: dict[str, Any] = {}
    if args.eval_only:
        if args.checkpoint:
            report = method.load_checkpoint(args.checkpoint)
            if report.missing:  # strict: evaluating half-loaded weights would look like a normal result
                raise UserError(f"checkpoint lacks {len(report.missing)} trainable key(s) of {method.name}",
                                args.checkpoint, "pass a checkpoint of this method, backbone and source")
            log(f"loaded {args.checkpoint}: {report.summary()}")
            train_info = {"checkpoint": str(args.checkpoint), "key_report": report.summary()}
            if "released_checkpoint" in run.spec:
                train_info["checkpoint_sha256"] = cached_sha256(args.checkpoint, default_hash_cache())
        elif getattr(args, "eval_untrained", False):
            log("!! evaluating the UNTRAINED model (--eval-untrained); the record says train.untrained: true")
            train_info = {"untrained": True}
        else:
            raise UserError(*EVAL_ONLY_WITHOUT_CHECKPOINT)
    else:
        aug = TrainAugmentation(crop_size=run.recipe.crop_size, **run.recipe.augmentation)
        train_set = training_dataset(run, TrainTransform(aug))
        log(f"training {run.method_class.name} ({run.backbone}, {run.scale}) on {train_set.name}/"
            f"{train_set.split} ({len(train_set)} images) for {run.recipe.iterations} iterations, "
            f"batch {run.recipe.batch_size}, on {device}")
        with distributed.main_first():  # e.g. FAMix's style mining: rank 0 fills the cache, the others read it
            prepared = method.prepare(train_set, default_hash_cache().parent, log, seed=run.seed, device=device)
        workers = args.workers if args.workers is not None else default_workers(device, run.method_class.name)
        if getattr(args, "grad_checkpointing", False):
            set_grad_checkpointing(method, True)
        train_set, sampler_factory, rcs_info = rare_class_setup(run, train_set, log)
        validate = selection_scorer(run, method, device, numerics, args, log) if run.recipe.select_interval else None
        trainer = Trainer(method, run.recipe, train_set, out_dir=run.out, seed=run.seed, device=device,
                          spec_hash=run.spec_hash, num_workers=workers, progress=show_bars(args), log=log,
                          sampler_factory=sampler_factory, compile=getattr(args, "compile", False),
                          numerics=numerics, validate=validate, should_stop=stop, on_log=logger.log_train)
        with stop.training_phase() if stop else contextlib.nullcontext():
            result = trainer.run(resume=args.resume)
        train_info = dataclasses.asdict(result)
        if rcs_info:
            train_info["rare_class_sampling"] = rcs_info
        if prepared:
            train_info["prepare"] = prepared
        if not distributed.is_main():  # DDP: rank 0 alone saves, evaluates and writes the record
            logger.close()
            return {}
        atomic_torch_save(method.checkpoint_state_dict(), run.out / "model_final.pt")
        if result.selection:  # FAMix's released selection: evaluate the best validated model
            report = method.load_checkpoint(run.out / result.selection["checkpoint"])
            log(f"checkpoint selection: evaluating the model of iteration {result.selection['best_iteration']} "
                f"({run.protocol.reference.key} mIoU {result.selection['best_miou']:.2f}; {report.summary()})")
    method.to(device).eval()

    splits = list(run.protocol.targets)
    if not args.no_reference:
        splits.append(run.protocol.reference)
    evaluations, galleries = {}, {}
    t_eval = time.perf_counter()
    for split_spec in splits:
        dataset = split_dataset(run, split_spec, build_test_transform(split_spec))
        galleries[split_spec.key] = gallery_names(run, split_spec, dataset)
        evaluations[split_spec.key] = evaluate_split(
            method.predict, dataset, run.protocol.inference, key=split_spec.key, device=device,
            out_dir=run.out / "eval", numerics=numerics, progress=show_bars(args),
            batch_windows=eval_batch_windows(args, device), resume=args.resume, gallery=galleries[split_spec.key],
            gallery_dir=run.out / PREDICTIONS_DIR / split_spec.key,
            num_workers=args.workers if getattr(args, "workers", None) is not None
            else default_workers(device, run.method_class.name))
    eval_seconds = time.perf_counter() - t_eval

    targets = {s.key: split_result(run, evaluations[s.key], s, galleries[s.key]) for s in run.protocol.targets}
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
        "seed": run.seed, "profile": run.profile, "precision": run.precision, "numerics": numerics.as_record(),
        **({"profile_notes": list(run.notes)} if run.notes else {}),
        "pretrained": weights["pretrained"], "weights": weights,
        "spec": run.spec, "spec_hash": run.spec_hash, "params": method.parameter_summary(),
        "environment": environment(str(device)), "train": train_info, "results": results,
        "datasets": fingerprints, "logger": logger.describe(),
        **({"released": run.spec["released_checkpoint"]} if "released_checkpoint" in run.spec else {}),
        "timings": {"total_s": time.perf_counter() - t_start, "eval_s": eval_seconds,
                    "train_s": train_info.get("seconds")},
    }
    write_json_atomic(run.out / RECORD_FILE, record)
    logger.log_eval(results, int(train_info.get("iterations") or 0))
    logger.close()
    if args.export:  # after the scores are safely written
        record["exports"] = export_splits(run, method, device, numerics, show_bars(args), log)
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
            f"pretrained: {str(record['pretrained']).lower()}"
            + (f", {record['profile']} profile" if record.get("profile", DEFAULT_PROFILE) != DEFAULT_PROFILE else "")
            + (f", {record['precision']}" if record.get("precision", "bf16") != "bf16" else ""))
    return head + "\n" + "\n".join(lines)


EVAL_ONLY_WITHOUT_CHECKPOINT = (
    "--eval-only without --checkpoint would evaluate a randomly initialised model", "--checkpoint",
    "pass --checkpoint FILE (e.g. <run>/model_final.pt), or --eval-untrained to evaluate the untrained model on "
    "purpose")


def check_arguments(args: argparse.Namespace) -> None:
    """Argument combinations that cannot mean what the user wants (before anything is imported or built)."""
    if args.eval_variant is not None and args.eval_variant not in list_variants(args.protocol):
        raise UserError(f"protocol {args.protocol} has no variant {args.eval_variant!r}", "--eval-variant",
                        f"use one of {', '.join(list_variants(args.protocol))}")
    if args.eval_only and not args.checkpoint and not args.eval_untrained and not args.released:
        raise UserError(*EVAL_ONLY_WITHOUT_CHECKPOINT)
    if args.checkpoint and not args.eval_only:
        raise UserError("--checkpoint is only read by --eval-only", "--checkpoint",
                        "add --eval-only (a training run continues from its own checkpoint with --resume)")
    if args.eval_untrained and (not args.eval_only or args.checkpoint):
        raise UserError("--eval-untrained goes with --eval-only and no --checkpoint", "--eval-untrained",
                        "drop --eval-untrained, or use it with --eval-only alone")
    if args.resume and args.force:
        raise UserError("--resume continues the run in the folder, --force starts it over", "--resume --force",
                        "pass one of them")
    if logger_problem(args.logger):
        raise UserError(logger_problem(args.logger))


def on_main_rank(fn):
    """``fn()`` on DDP rank 0 only; its result, or its :class:`UserError`, reaches every rank."""
    from runners import distributed

    result, error = None, None
    if distributed.is_main():
        try:
            result = fn()
        except UserError as exc:
            error = exc
    result, error = distributed.all_gather_object((result, error))[0]
    if error is not None:
        raise error
    return result


def guarded_execute(run: ResolvedRun, args: argparse.Namespace) -> dict[str, Any] | None:
    """:func:`execute` behind the run-folder check, the preflight and the folder's lock, stoppable by
    SIGINT/SIGTERM (``runners.interrupt``). None when the run is already finished (nothing to do)."""
    from benchmarks.evaluate import EvaluationError
    from runners import distributed
    from runners.train import TrainingStopped

    if not on_main_rank(lambda: check_run_folder(run.out, resume=args.resume, force=args.force)):
        return None
    on_main_rank(lambda: preflight(run, args, world_size=distributed.info().world_size))
    lock = on_main_rank(lambda: open_run_folder(run.out, force=args.force))
    stop = StopRequest()
    with (lock if distributed.is_main() else contextlib.nullcontext()), stop.installed():
        try:
            return execute(run, args, stop=stop)
        except TrainingStopped as exc:
            raise RunInterrupted(f"{signal_name(stop.signum)} at iteration {exc.iteration}; checkpoint saved",
                                 exc.checkpoint, "the same command with --resume", stop.signum) from None
        except KeyboardInterrupt:
            raise RunInterrupted(f"{signal_name(stop.signum or 2)}; the checkpoint and the evaluation files "
                                 "written so far are kept", run.out, "the same command with --resume",
                                 stop.signum or 2) from None
        except EvaluationError as exc:
            if exc.__cause__ is not None and is_disk_full(exc.__cause__, run.out):
                raise disk_full_error(run.out / "eval", exc.__cause__) from exc
            raise


def run_main(args: argparse.Namespace) -> int:
    """Checks (arguments, run folder, preflight) before anything is built, then the run under a lock."""
    check_arguments(args)
    from runners import distributed

    distributed.init_from_environment()  # torchrun / multi-task submitit job: one process per GPU
    with distributed.main_first():  # rank 0 builds caches (miniature benchmark) before the others read them
        run = resolve(args, log=functools.partial(print, file=sys.stderr) if args.dry_run else print)
    if args.dry_run:
        info = dry_run(run)
        print(format_profile_differences(run.method_class.name, info["profile_differences"],
                                         info["profile_notes"]), file=sys.stderr)
        print(json.dumps(info, indent=2, default=str))
        return 0
    record = guarded_execute(run, args)
    distributed.barrier()  # every rank done before the process group is torn down
    distributed.cleanup()
    if not record:  # finished already, or DDP rank > 0 (rank 0 reports)
        return 0
    print(summary_table(record))
    print(f"result record: {run.out / RECORD_FILE}")
    return 0


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_main(args)
    except UserError as exc:  # a mistake or a requested stop: one line, nothing computed is lost
        return report_error(exc, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
