"""The main job's printed numbers are pinned (``main_job.json``) and the README example is rendered from them.

The fast tests check that the README shows exactly the pinned table and that the miniature gta2cbm protocol
still has the pinned hash. The slow one runs the main job itself (about 80 s on 2 idle cores) and compares
its numbers with the pin (``tolerance_miou``); ``DGSS_MAIN_JOB=update`` rewrites the pin and the README example
from a fresh run, ``DGSS_MAIN_JOB=0`` skips it.
"""

import json
import os
import shlex
from pathlib import Path

import pytest
import torch

from benchmarks.protocols import get_protocol
from methods.registry import get_method_class
from runners.run import main as run_main
from runners.run import summary_table, with_source_splits

PIN = Path(__file__).with_name("main_job.json")
README = Path(__file__).resolve().parents[2] / "README.md"
MODE = os.environ.get("DGSS_MAIN_JOB", "")


def record_from_pin(pin: dict) -> dict:
    """A result record with the pinned scores (what ``summary_table`` reads); mean and rPD recomputed."""
    targets = {k: {"miou": v} for k, v in pin["targets"].items()}
    ref = pin["reference"]["miou"]
    mean = sum(pin["targets"].values()) / len(targets)
    return {"method": pin["method"], "backbone": pin["backbone"], "protocol": pin["protocol"],
            "eval_variant": pin["eval_variant"], "protocol_hash": pin["protocol_hash"], "miniature": True,
            "seed": pin["seed"], "pretrained": pin["pretrained"],
            "results": {"targets": targets, "mean_miou": mean, "reference": {**pin["reference"]},
                        "rpd": {k: 100 * v["miou"] / ref for k, v in targets.items()},
                        "mean_rpd": 100 * mean / ref}}


def readme_example() -> str:
    text = README.read_text()
    start = text.index("```\ntqdm / ") + 4
    return text[start:text.index("```", start)].rstrip("\n")


def test_readme_example_is_the_pinned_output():
    assert readme_example() == summary_table(record_from_pin(json.loads(PIN.read_text())))


def test_the_pinned_protocol_is_todays():
    """The protocol as the main job resolves it (the recipe's source split) still has the pinned hash."""
    pin = json.loads(PIN.read_text())
    protocol = get_protocol(pin["protocol"], miniature=True, variant=pin["eval_variant"])
    recipe = get_method_class(pin["method"]).recipe(source=protocol.source.dataset, scale="miniature")
    assert with_source_splits(protocol, recipe.gta_split).content_hash() == pin["protocol_hash"]


@pytest.mark.slow(minutes=2.5)  # the main job: about 150 CPU-s
@pytest.mark.skipif(MODE == "0", reason="DGSS_MAIN_JOB=0: the 80 s main job is skipped")
def test_main_job_prints_the_pinned_numbers(tmp_path, capsys):
    pin = json.loads(PIN.read_text())
    argv = shlex.split(pin["command"])[3:] + ["--out", str(tmp_path / "run"), "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(pin["torch_threads"])  # CPU numerics depend on the thread count (xdist workers get 1)
    try:
        assert run_main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    # 4 decimals, so that the README example rendered from the pin prints the run's rPD digits too
    got = {k: round(v["miou"], 4) for k, v in record["results"]["targets"].items()}
    got_ref = round(record["results"]["reference"]["miou"], 4)
    if MODE == "update":
        pin.update(targets=got, reference={"key": record["results"]["reference"]["key"], "miou": got_ref},
                   protocol_hash=record["protocol_hash"], pretrained=record["pretrained"],
                   measured=f"2 CPU cores, torch {torch.__version__}")
        PIN.write_text(json.dumps(pin, indent=2) + "\n")
        text = README.read_text()
        README.write_text(text.replace(readme_example(), summary_table(record_from_pin(pin))))
    assert record["protocol_hash"] == pin["protocol_hash"] and record["pretrained"] == pin["pretrained"]
    for key, value in pin["targets"].items():
        assert got[key] == pytest.approx(value, abs=pin["tolerance_miou"]), key
    assert got_ref == pytest.approx(pin["reference"]["miou"], abs=pin["tolerance_miou"])
