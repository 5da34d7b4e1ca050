"""Weights registry: locating official files, the folder report (sha256 + cache), errors, checkpoint reading."""

from __future__ import annotations

import hashlib
import os
import warnings

import pytest
import torch

import methods.weights as W
from methods.weights import (
    OFFICIAL_WEIGHTS,
    KeyReport,
    MissingWeightsError,
    format_weights_report,
    is_torchscript_archive,
    locate,
    read_state_dict,
    sha256_file,
    weights_dir_from,
    weights_report,
)

METHODS = {"tqdm", "rein", "set", "famix", "vireo", "vltseg"}


def test_registry_lists_the_official_files():
    assert set(OFFICIAL_WEIGHTS) == {
        "dinov2_vitl14_pretrain.pth", "EVA02_CLIP_L_336_psz14_s6B.pt", "EVA02_CLIP_L_psz14_s4B.pt", "ViT-B-16.pt",
        "ViT-L-14-336px.pt", "RN50.pt", "RN101.pt", "depth_anything_v2_vitl.pth",
    }
    for name, entry in OFFICIAL_WEIGHTS.items():
        assert entry.file == name and entry.source and entry.description
        assert entry.used_by and set(entry.used_by) <= METHODS
        if entry.sha256 is not None:  # OpenAI publishes the digest in the download path
            assert len(entry.sha256) == 64 and entry.sha256 in entry.source
    assert "famix" in OFFICIAL_WEIGHTS["RN101.pt"].used_by and "vireo" in OFFICIAL_WEIGHTS["ViT-L-14-336px.pt"].used_by


def test_weights_dir_from_flag_then_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DGSS_WEIGHTS", raising=False)
    assert weights_dir_from(None) is None
    monkeypatch.setenv("DGSS_WEIGHTS", str(tmp_path / "env"))
    assert weights_dir_from(None) == tmp_path / "env"
    assert weights_dir_from(str(tmp_path / "flag")) == tmp_path / "flag"


def test_locate(tmp_path):
    (tmp_path / "RN50.pt").write_bytes(b"x")
    assert locate(tmp_path, "RN50.pt") == tmp_path / "RN50.pt"
    assert locate(tmp_path, "RN101.pt") is None
    assert locate(None, "RN50.pt") is None


def test_weights_report_and_table(tmp_path):
    blobs = {"RN50.pt": b"not really clip" * 100, "dinov2_vitl14_pretrain.pth": os.urandom(3000)}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    cache = tmp_path / "cache" / "sha256.json"
    rows = weights_report(tmp_path, cache_file=cache)
    assert [r.file for r in rows] == list(OFFICIAL_WEIGHTS)
    by_file = {r.file: r for r in rows}
    for name, data in blobs.items():
        row = by_file[name]
        assert row.found and row.path == str(tmp_path / name) and row.size == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / name, chunk=7)
        assert row.expected_by == OFFICIAL_WEIGHTS[name].used_by
    assert by_file["RN50.pt"].sha256_ok is False  # the published digest does not match our fake file
    assert by_file["dinov2_vitl14_pretrain.pth"].sha256_ok is None  # no published digest
    missing = [r for r in rows if not r.found]
    assert {r.file for r in missing} == set(OFFICIAL_WEIGHTS) - set(blobs)
    assert all(r.path is None and r.size is None and r.sha256 is None for r in missing)

    table = format_weights_report(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["file", "used", "by", "found", "size", "sha256"]
    assert len(lines) == 2 + len(OFFICIAL_WEIGHTS)
    assert by_file["RN50.pt"].sha256[:16] in table and by_file["RN50.pt"].sha256[:17] not in table
    assert "MISMATCH" in table and "NO" in table and "famix" in table

    only = weights_report(tmp_path, ["RN50.pt", "my_extra.pth"], hash_files=False, cache_file=None)
    assert [(r.file, r.found, r.sha256) for r in only] == [("RN50.pt", True, None), ("my_extra.pth", False, None)]


def test_sha256_cache_reused_until_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "RN101.pt"
    path.write_bytes(b"a" * 1000)
    cache = tmp_path / "sha256.json"
    first = weights_report(tmp_path, ["RN101.pt"], cache_file=cache)[0].sha256
    assert cache.is_file()

    def boom(*args, **kwargs):
        raise AssertionError("re-hashed an unchanged file")

    monkeypatch.setattr(W, "sha256_file", boom)
    assert weights_report(tmp_path, ["RN101.pt"], cache_file=cache)[0].sha256 == first
    monkeypatch.undo()
    path.write_bytes(b"b" * 1001)  # size changes -> the cached entry is stale
    assert weights_report(tmp_path, ["RN101.pt"], cache_file=cache)[0].sha256 == hashlib.sha256(b"b" * 1001).hexdigest()


def test_missing_weights_error_message(tmp_path):
    err = MissingWeightsError("EVA02_CLIP_L_336_psz14_s6B.pt", tmp_path)
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    for part in ("EVA02_CLIP_L_336_psz14_s6B.pt", str(tmp_path), "--weights-dir", "DGSS_WEIGHTS", "QuanSun/EVA-CLIP",
                 "tqdm"):
        assert part in msg, part
    msg = str(MissingWeightsError("RN50.pt", None))
    assert "no weights folder was given" in msg and "--weights-dir" in msg and "openaipublic" in msg
    msg = str(MissingWeightsError("RN50.pt", tmp_path / "nope"))
    assert "does not exist" in msg and str(tmp_path / "nope") in msg
    with pytest.raises(FileNotFoundError, match="my_file.pth"):
        raise MissingWeightsError("my_file.pth", tmp_path)


def test_key_report():
    good = KeyReport(missing=[], unexpected=[], converted=["pos_embed (resized)"])
    assert good.ok() and good.summary().startswith("ok")
    bad = KeyReport(missing=[f"k{i}" for i in range(20)], unexpected=["x"], converted=[], ignored=["visual.a"])
    assert not bad.ok()
    s = bad.summary()
    assert s.startswith("MISMATCH") and "missing 20" in s and "(+12)" in s and "ignored 1" in s


def test_read_state_dict_containers(tmp_path):
    state = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    torch.save({"meta": {"iter": 5}, "model": {"module." + k: v for k, v in state.items()}}, wrapped)
    for path in (plain, wrapped):
        got = read_state_dict(path)
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)

    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_state_dict(tmp_path / "w.safetensors")["a.weight"], state["a.weight"])

    module = torch.nn.Linear(3, 2)
    jit_path = tmp_path / "jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), str(jit_path))
    assert is_torchscript_archive(jit_path) and not is_torchscript_archive(plain)
    got = read_state_dict(jit_path)
    assert torch.equal(got["weight"], module.weight.detach())

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "absent.pth")
