"""``python -m runners.speed``: the speed benchmark's command (``benchmarks.speed``) with what it needs from above
the benchmarks layer: registered methods at a scale (:class:`MethodSpec`), the trainer's own ``build_optimizer``
and ``train_step``, the recipes' training augmentations, and two model-level checks.

    python -m runners.speed --method rein                      # paper scale on a GPU, miniature on a CPU
    python -m runners.speed --method frozen_m2f --scale miniature --res 64 --steps 3   # CI-sized
    python -m runners.speed --data                             # loading vs a plain cv2 baseline, scoring

What is timed (data already on the device, random weights, synthetic but realistic label maps): **train**, the
trainer's step (``runners.train.train_step``: losses under the precision's autocast, sum, ``zero_grad``,
``backward``, clipping when the recipe clips, optimizer step; the optimizer from ``runners.train.build_optimizer``)
and **eval**, ``Method.predict`` on ``--eval-batch`` sliding windows under ``inference_mode``, in two modes on
identically seeded models: ``fp32 eager`` and ``optimized`` (``--precision``, default bf16, set by
``benchmarks.numerics.configure_numerics`` exactly as ``runners.run`` sets it; ``--compile`` / ``--channels-last``
on request). FLOPs are model FLOPs (FlopCounterMode, no recomputation); MFU against the datasheet peak. See
``benchmarks.speed`` for the suites and ``--help`` for the extras (``--data``, ``--eval-protocol``,
``--sync-debug``, ``--profile``, ``--probe``, ``--check-grad-checkpointing``, ``--suite``).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.speed.cli import ModelSupport, parse_size, main as cli_main
from benchmarks.speed.flops import count_flops
from benchmarks.speed.suites import TrainerParts, synthetic_batch
from benchmarks.speed.timing import device_name, free_memory, synchronize, time_calls
from datasets.transforms import TrainAugmentation
from methods.backbones.vit import ViTBackbone, _build_timm, set_grad_checkpointing, vit_config
from runners.train import build_optimizer, train_step

__all__ = ["MethodSpec", "resolve_method", "check_grad_checkpointing", "probe", "train_recipes", "main"]

RECIPE_METHODS = ("rein", "set", "vireo", "tqdm", "vltseg", "famix", "frozen_m2f")


# ---------------------------------------------------------------------------------------------- method specs
# ---------------------------------------------------------------------------------------------- method specs
@dataclass
class MethodSpec:
    """What to build: a registered method at a scale, with its recipe (batch and crop possibly overridden)."""

    name: str
    backbone: str | None
    scale: str
    source: str
    batch_size: int
    res: tuple[int, int]
    eval_res: tuple[int, int]
    eval_batch: int
    grad_checkpointing: bool
    recipe: Any
    method_class: Any
    config: Any

    def build(self, device: torch.device, *, seed: int = 0, grad_checkpointing: bool | None = None) -> Any:
        config = dataclasses.replace(self.config) if dataclasses.is_dataclass(self.config) else self.config
        torch.manual_seed(seed)
        with torch.device(device):
            method = self.method_class(config)
        method.to(device)
        if getattr(method, "style_bank", False) is None and getattr(config, "style_mixing", False):
            # FAMix mixes styles from a bank mined from the training set before training; for timing, a
            # synthetic bank of the same shape (same sampling and mixing cost) stands in for it
            from methods.famix import StyleBank

            method.set_style_bank(StyleBank.synthetic(config.resnet.channels[0], seed=seed))
        gc_on = self.grad_checkpointing if grad_checkpointing is None else grad_checkpointing
        n = set_grad_checkpointing(method, gc_on)
        if gc_on and n == 0:
            warnings.warn(f"{self.name}: no ViTBackbone found; --grad-checkpointing has no effect", stacklevel=2)
        return method

    @staticmethod
    def set_grad_checkpointing(method: Any, enable: bool) -> int:
        return set_grad_checkpointing(method, enable)

    def describe(self) -> str:
        bb = self.backbone or getattr(self.config, "backbone", "") or "default"
        return (f"{self.name} / {bb} ({self.scale}), source {self.source}, batch {self.batch_size}, "
                f"train {self.res[0]}x{self.res[1]}, eval windows {self.eval_res[0]}x{self.eval_res[1]} "
                f"x{self.eval_batch}" + (", grad checkpointing" if self.grad_checkpointing else ""))


def resolve_method(name: str, *, backbone: str | None = None, scale: str = "miniature", source: str = "gta5",
                   batch_size: int | None = None, res: int | Sequence[int] | None = None,
                   eval_res: int | Sequence[int] | None = None, eval_batch: int = 2,
                   grad_checkpointing: bool = False, config: Any = None) -> MethodSpec:
    """Resolve a registered method name like the runner does (default config for the scale, the recipe of
    the source; ``config_for_source`` when the method has it)."""
    try:
        from methods.registry import get_method_class

        cls = get_method_class(name)
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"error: importing the method registry needs the package {exc.name!r}, which is not installed here. "
            "Every method module is imported to fill the registry; install the pinned stack (specs/install.md), "
            "or on a lent GPU carry it as wheels (.library/device/README.md): e.g. open_clip_torch==3.3.0, "
            "ftfy, wcwidth, timm==1.0.31") from exc
    bb = backbone or (cls.backbones[0] if getattr(cls, "backbones", ()) else None)
    recipe = cls.recipe(source=source, scale=scale, backbone=bb)
    if config is None:
        config = cls.default_config(bb, scale=scale)
        hook = getattr(cls, "config_for_source", None)
        if hook is not None:
            config = hook(config, source)
    train_res = parse_size(res) if res is not None else tuple(int(x) for x in recipe.crop_size)
    if eval_res is None:
        eval_res = (512, 512) if scale == "paper" else (256, 256)
    return MethodSpec(name=cls.name, backbone=bb, scale=scale, source=source,
                      batch_size=int(batch_size or recipe.batch_size), res=train_res, eval_res=parse_size(eval_res),
                      eval_batch=int(eval_batch), grad_checkpointing=grad_checkpointing, recipe=recipe,
                      method_class=cls, config=config)


# ---------------------------------------------------------------------------------------------- checks
# ---------------------------------------------------------------------------------------------- checks
def check_grad_checkpointing(spec: MethodSpec, *, device: torch.device | str = "cpu", batch: int = 2,
                             res: tuple[int, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """One forward + backward with and without activation checkpointing from the same weights, inputs and RNG:
    loss and gradient differences, and how many backbone blocks ran again in the backward pass."""
    device = torch.device(device)
    res = res or spec.res
    images, labels = synthetic_batch(batch, res, seed=seed + 1, device=device)
    runs = {}
    for enable in (False, True):
        method = spec.build(device, seed=seed, grad_checkpointing=enable)
        method.train()
        calls = [0]

        def counting(forward: Callable) -> Callable:  # module hooks do not fire in checkpoint recomputation
            def wrapped(*a: Any, **k: Any) -> Any:
                calls[0] += 1
                return forward(*a, **k)
            return wrapped

        blocks = [blk for m in method.modules() if isinstance(m, ViTBackbone) for blk in m.vit.blocks]
        for blk in blocks:
            blk.forward = counting(blk.forward)
        torch.manual_seed(seed + 2)
        losses = method.training_step(images, labels)
        forward_calls = calls[0]
        total = sum(losses.values())
        total.backward()
        for blk in blocks:
            del blk.forward  # back to the class's forward
        grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
        runs[enable] = {"losses": {k: float(v.detach()) for k, v in losses.items()}, "total": float(total.detach()),
                        "grads": grads,
                        "block_calls_forward": forward_calls, "block_calls_backward": calls[0] - forward_calls}
    a, b = runs[False], runs[True]
    if set(a["grads"]) != set(b["grads"]):
        raise AssertionError(f"different parameters got gradients: {sorted(set(a['grads']) ^ set(b['grads']))[:5]}")
    rel = {}
    for n, g in a["grads"].items():
        denom = float(g.abs().max()) or 1.0
        rel[n] = float((g - b["grads"][n]).abs().max()) / denom
    worst = max(rel, key=rel.get) if rel else None
    return {
        "method": spec.name, "loss_without": a["total"], "loss_with": b["total"],
        "loss_abs_diff": abs(a["total"] - b["total"]),
        "max_rel_grad_diff": rel[worst] if worst else 0.0, "worst_param": worst, "num_grads": len(rel),
        "recomputed_blocks": b["block_calls_backward"], "recomputed_blocks_without": a["block_calls_backward"],
    }


# ---------------------------------------------------------------------------------------------- probe
def probe(device: torch.device, *, small: bool | None = None) -> dict[str, Any]:
    """Ceilings and micro-benchmarks that explain the step times (METHOD.md: measure the two ceilings once).

    - bf16 matmul TFLOP/s (8192^3) and device copy GB/s (bytes read + written);
    - EVA02-L's SwiGLU GEMMs at hidden 2730 (the real width, not a multiple of 8) against 2736 / 2816;
    - SDPA back-ends (flash, memory-efficient, math) at ViT-L shapes, forward + backward;
    - one EVA02-L block (rope, SwiGLU, sub-LN) against one DINOv2-L block, forward + backward, bf16.
    On a CPU the sizes shrink to a smoke test (numbers meaningless)."""
    cuda = device.type == "cuda"
    small = (not cuda) if small is None else small
    dt = torch.bfloat16 if cuda else torch.float32
    out: dict[str, Any] = {"device": device_name(device), "dtype": str(dt)}

    def bench(fn: Callable[[], Any], n: int = 10) -> float:
        fn()
        synchronize(device)
        return statistics.median(time_calls(fn, n if cuda else 2, device))

    n = 512 if small else 8192
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    out["matmul_tflops"] = 2 * n ** 3 / bench(lambda: a @ b) / 1e12
    del a, b
    numel = (1 << 20) if small else (1 << 29)  # 1 GiB of bf16
    src = torch.randn(numel, device=device, dtype=dt)
    dst = torch.empty_like(src)
    out["copy_gb_s"] = 2 * src.numel() * src.element_size() / bench(lambda: dst.copy_(src)) / 1e9
    del src, dst
    free_memory(device)

    m = 256 if small else 8 * 1297  # batch 8 x (36*36 + 1) tokens of EVA02-L at 512/14
    d = 64 if small else 1024
    x = torch.randn(m, d, device=device, dtype=dt)
    gemm = {}
    for hidden in ((170, 176) if small else (2730, 2736, 2816)):
        w_up = torch.randn(hidden, d, device=device, dtype=dt)
        h = torch.randn(m, hidden, device=device, dtype=dt)
        w_down = torch.randn(d, hidden, device=device, dtype=dt)
        t_up = bench(lambda: torch.nn.functional.linear(x, w_up))
        t_down = bench(lambda: torch.nn.functional.linear(h, w_down))
        flops = 2 * m * d * hidden
        gemm[str(hidden)] = {"up_tflops": flops / t_up / 1e12, "down_tflops": flops / t_down / 1e12,
                             "up_ms": t_up * 1e3, "down_ms": t_down * 1e3}
    out["swiglu_gemm"] = gemm
    del x
    free_memory(device)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    bsz, heads, seq, hd = (2, 2, 128, 32) if small else (8, 16, 1297, 64)
    q, k, v = (torch.randn(bsz, heads, seq, hd, device=device, dtype=dt, requires_grad=True) for _ in range(3))
    fl = 4 * bsz * heads * seq * seq * hd * 3.5  # forward (2 matmuls) + backward (5 matmuls)
    sdpa = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)), ("math", SDPBackend.MATH)):
        if backend is None:
            continue

        def fwd_bwd() -> None:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

        try:
            t = bench(fwd_bwd, 5)
            sdpa[name] = {"ms": t * 1e3, "tflops": fl / t / 1e12}
        except RuntimeError as exc:
            sdpa[name] = {"error": str(exc).splitlines()[0][:120]}
    out["sdpa_fwd_bwd"] = sdpa
    del q, k, v
    free_memory(device)

    blocks = {}
    for label, name in (("dinov2", "dinov2_tiny" if small else "dinov2_vitl14_p14"),
                        ("eva02", "eva02_tiny" if small else "eva02_clip_vitl14")):
        cfg = vit_config(name, depth=1, taps=(0,), frozen=False, drop_path=0.0)
        with torch.device(device):
            vit = _build_timm(cfg)
        blk = vit.blocks[0]
        grid = 4 if small else 36
        tokens = torch.randn(2 if small else 8, 1 + grid * grid, cfg.embed_dim, device=device, requires_grad=True)
        rope = vit.rope.get_embed(shape=[grid, grid]) if getattr(vit, "rope", None) is not None else None

        def run_block() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                y = blk(tokens, rope=rope) if rope is not None else blk(tokens)
            y.float().square().mean().backward()

        counted = count_flops(run_block)["total"]
        t = bench(run_block, 10)
        blocks[label] = {"ms": t * 1e3, "gflop": counted / 1e9, "tflops": counted / t / 1e12}
        del vit, blk, tokens
        free_memory(device)
    out["block_fwd_bwd"] = blocks
    return out


# ---------------------------------------------------------------------------------------------- recipes
def train_recipes(source: str = "gta5") -> dict[str, tuple[TrainAugmentation, str]]:
    """The paper-scale training augmentation of every registered method for ``source``, methods that share one
    grouped ("rein/set/vireo"): {names: (augmentation, description)}."""
    from methods.registry import get_method_class, list_methods

    groups: dict[TrainAugmentation, list[str]] = {}
    for name in [m for m in RECIPE_METHODS if m in list_methods()]:
        recipe = get_method_class(name).recipe(source=source, scale="paper")
        aug = TrainAugmentation(crop_size=tuple(recipe.crop_size), **recipe.augmentation)
        groups.setdefault(aug, []).append(name)
    return {"/".join(names): (aug, f"{aug.rescale}, crop {aug.crop_size[0]}x{aug.crop_size[1]}"
                                   + (", color jitter" if aug.color_jitter else ""))
            for aug, names in groups.items()}


def _miniature_root() -> Path:
    from datasets import ensure_miniature

    return Path(ensure_miniature())


def _list_methods() -> list[str]:
    from methods.registry import list_methods

    return list(list_methods())


MODELS = ModelSupport(resolve_method=resolve_method, list_methods=_list_methods,
                      trainer=TrainerParts(build_optimizer=build_optimizer, train_step=train_step),
                      train_recipes=train_recipes, check_grad_checkpointing=check_grad_checkpointing,
                      probe=probe, miniature_root=_miniature_root)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, models=MODELS)


if __name__ == "__main__":
    sys.exit(main())
