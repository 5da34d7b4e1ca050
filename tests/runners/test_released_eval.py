"""runners.released: ``list`` (found / missing / checksum mismatch) and ``eval`` end to end on the miniature
benchmark, with small checkpoints written in each official format (key names and nesting of the real files:
mmseg 1.x ``{"meta", "state_dict"}`` for Rein (tokens + head only) and the VLTSeg re-implementation, tqdm's
mmseg 0.x full checkpoint, FAMix's ``{"cur_itrs", "model_state", ...}``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from methods.heads.mmdet_keys import mmdet_mask2former_template, synthetic_state_dict
from methods.registry import get_method_class
from methods.released import RELEASED_CHECKPOINTS, ReleasedCheckpoint
from runners import released, run
from runners.records import RECORD_FILE


@pytest.fixture(scope="module")
def tiny_root():
    """A miniature benchmark with one or two images per split (cached, shared with the sweep tests)."""
    from datasets.miniature import MiniatureParams, ensure_miniature

    return ensure_miniature(params=MiniatureParams(count_scale=0.01, domains=("gta5", "cityscapes", "bdd100k",
                                                                            "mapillary")))


def miniature_method(entry: ReleasedCheckpoint):
    """The model ``runners.run`` builds for this entry on the miniature benchmark."""
    cls = get_method_class(entry.method)
    source = "cityscapes" if entry.source == "cityscapes" else "gta5"
    return cls(cls.config_for_source(cls.default_config(entry.backbone, scale="miniature"), source))


def official_file(entry: ReleasedCheckpoint, weights_dir: Path, seed: int = 3) -> Path:
    """Write a small checkpoint in ``entry``'s official format at its registry path under ``weights_dir``."""
    model = miniature_method(entry)
    cfg = model.config
    if entry.method == "rein":
        from methods.rein import rein_reference_template

        t = mmdet_mask2former_template(cfg.head, query_tables=False)
        t["decode_head.querys2feat.weight"] = (cfg.head.hidden_dim, cfg.head.hidden_dim)
        t["decode_head.querys2feat.bias"] = (cfg.head.hidden_dim,)
        t.update(rein_reference_template(cfg.vit.depth, cfg.vit.embed_dim, token_length=cfg.token_length,
                                         lora_dim=cfg.lora_dim, query_dim=cfg.head.hidden_dim))
        obj = {"meta": {"mmseg_version": "1.2.2", "iter": 40000}, "state_dict": synthetic_state_dict(t, seed=seed)}
    elif entry.method == "vltseg":
        from methods.vltseg import vltseg_backbone_template

        t = vltseg_backbone_template(cfg.vit)
        t.update(mmdet_mask2former_template(cfg.head))
        obj = {"meta": {"iter": 5000}, "state_dict": synthetic_state_dict(t, seed=seed)}
    elif entry.method == "tqdm":
        from methods.backbones.checkpoints import synthetic_official_state_dict
        from tests.methods.test_tqdm import _ref_fpn, _ref_head, _ref_text_and_context

        official = synthetic_official_state_dict(cfg.vit, "eva_clip" if entry.backbone.startswith("eva") else
                                                 "openai_clip", file_grid=cfg.vit.grid_size[0])
        sd = {"backbone." + k[len("visual."):]: v for k, v in official.items() if k.startswith("visual.")}
        sd.update({"reg_E0." + k[len("backbone."):]: v.clone() for k, v in sd.items()})
        _ref_fpn(sd, cfg.vit.embed_dim)
        _ref_text_and_context(sd, model)
        _ref_head(sd, cfg.head, cfg.text.embed_dim)
        obj = {"meta": {"iter": 20000}, "state_dict": sd, "optimizer": {}}
    elif entry.method == "famix":
        from tests.methods.test_famix import _reference_state

        obj = {"cur_itrs": 40000, "model_state": _reference_state(model),
               "optimizer_state": {"state": {}, "param_groups": []}, "scheduler_state": {}, "best_score": 0.5}
    else:  # pragma: no cover - a method with releases but no builder here
        raise AssertionError(entry.method)
    path = weights_dir / entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------------------------------------- list
def test_list_reports_found_missing_and_checksum_mismatch(tmp_path, capsys):
    rein = RELEASED_CHECKPOINTS["rein-dinov2-gta5"]
    path = official_file(rein, tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "dinov2_vitl14_pretrain.pth").write_bytes(b"not read by list")
    published_ok = dataclasses.replace(rein, sha256=digest, size=path.stat().st_size)
    published_bad = dataclasses.replace(rein, sha256="0" * 64)
    wrong_size = dataclasses.replace(rein, size=path.stat().st_size + 1)
    other = RELEASED_CHECKPOINTS["vltseg-gta-1"]
    states = released.file_statuses(tmp_path, [rein, published_ok, published_bad, wrong_size, other])
    assert [s.state for s in states] == ["found", "found", "CHECKSUM MISMATCH", "SIZE MISMATCH", "missing"]
    assert states[0].sha256 == digest and states[0].needs_missing == ()
    assert states[4].needs_missing == ("EVA02_CLIP_L_psz14_s4B.pt",)

    assert released.main(["list", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("rein-dinov2-gta5 "))
    assert " found " in line and digest[:16] in line and "rein/GTAV/iter_40000_published.pth" in line
    assert "23,24" in line and "gta2cbm[rein]" in line
    assert "vltseg/zenodo-14766160/vltseg_checkpoint_gta_1.pth  <-  https://zenodo.org/records/14766160" in out
    assert "set: " in out and "vireo: " in out  # methods without releases, with the source
    assert f"{len(RELEASED_CHECKPOINTS)} released checkpoints of 4 methods: 1 found" in out

    assert released.main(["list", "--weights-dir", str(tmp_path), "--json", "--method", "vltseg"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["id"] for c in data["checkpoints"]} == {c.id for c in RELEASED_CHECKPOINTS.values()
                                                      if c.method == "vltseg"}
    assert all(c["state"] == "missing" for c in data["checkpoints"])


# ---------------------------------------------------------------------------------------------- eval, one cell
FORMATS = ["rein-dinov2-gta5", "vltseg-gta-1", "tqdm-eva02-clip-vit-l-gta", "famix-rn50-gta5"]


@pytest.mark.parametrize("checkpoint_id", FORMATS)
def test_run_released_loads_every_official_format(tmp_path, tiny_root, checkpoint_id):
    entry = RELEASED_CHECKPOINTS[checkpoint_id]
    official_file(entry, tmp_path / "w")
    protocol, variant = entry.evaluations[0]
    out = tmp_path / "run"
    argv = ["--method", entry.method, "--backbone", entry.backbone, "--protocol", protocol, "--eval-variant",
            variant, "--profile", "released", "--released", entry.id, "--weights-dir", str(tmp_path / "w"),
            "--data-root", str(tiny_root), "--no-reference", "--no-progress", "--out", str(out)]
    assert run.main(argv) == 0
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["train"]["key_report"].startswith("ok: missing 0; unexpected 0"), record["train"]["key_report"]
    assert record["train"]["checkpoint"] == str(tmp_path / "w" / entry.path)
    assert record["released"] == {"id": entry.id, "file": entry.file, "sha256_published": None,
                                  "reported_lines": list(entry.reported_lines)}
    assert record["profile"] == record["spec"]["profile"] == "released"
    assert record["eval_variant"] == variant and record["protocol"] == protocol
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}


def test_user_mistakes_exit_2_before_building(tmp_path, tiny_root, capsys):
    base = ["--method", "rein", "--protocol", "gta2cbm", "--data-root", str(tiny_root), "--weights-dir", str(tmp_path)]
    cases = [(["--released", "rein-nope"], ["unknown released checkpoint 'rein-nope'"]),
             (["--released", "rein-dinov2-gta5"], ["rein/GTAV/iter_40000_published.pth", "fix: download https://"]),
             (["--released", "vltseg-gta-1"], ["pass --method vltseg --backbone eva02_clip_vitl14_s4b"])]
    for extra, messages in cases:
        assert run.main(base + extra) == 2
        err = capsys.readouterr().err
        assert all(m in err for m in messages) and len(err.strip().splitlines()) == 1, err
    assert released.main(["eval", "--weights-dir", str(tmp_path / "absent")]) == 2
    assert "weights folder" in capsys.readouterr().err
    # a folder without any released file
    assert released.main(["eval", "--weights-dir", str(tmp_path), "--data-root", str(tiny_root)]) == 2
    assert "no evaluable released checkpoint" in capsys.readouterr().err
    assert not list(tmp_path.rglob(RECORD_FILE))


# ---------------------------------------------------------------------------------------------- eval, the sweep
def test_eval_runs_both_profiles_as_sweep_cells_and_skips_done(tmp_path, tiny_root, capsys):
    weights = tmp_path / "w"
    official_file(RELEASED_CHECKPOINTS["rein-dinov2-gta5"], weights)
    sweep = tmp_path / "released"
    argv = ["eval", "--weights-dir", str(weights), "--data-root", str(tiny_root), "--out", str(sweep),
            "--no-reference", "--cpus-per-task", "1"]
    assert released.main(argv + ["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "2 cells (local executor): 2 to submit" in plan
    # released profile: Rein's official seed (42); harmonised: 0
    assert "rein dinov2_vitl14 gta2cbm rein seed 42" in plan and "rein dinov2_vitl14 gta2cbm default seed 0" in plan

    assert released.main(argv) == 0
    capsys.readouterr()
    records = [json.loads(p.read_text()) for p in sorted(sweep.rglob(RECORD_FILE))]
    assert sorted((r["profile"], r["eval_variant"]) for r in records) == [("harmonised", "default"),
                                                                          ("released", "rein")]
    assert {r["released"]["id"] for r in records} == {"rein-dinov2-gta5"}
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert sorted(c["labels"]["profile"] for c in manifest["cells"].values()) == ["harmonised", "released"]
    assert {c["labels"]["released"] for c in manifest["cells"].values()} == {"rein-dinov2-gta5"}

    assert released.main(argv) == 0  # again: both cells are done and skipped
    assert "2 cells (local executor): 0 to submit, 2 done" in capsys.readouterr().out
