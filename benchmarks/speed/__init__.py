"""The speed benchmark: training step and evaluation throughput, data loading and scoring, as library code.

- :mod:`.timing`: the two modes compared (fp32 eager, and ``--precision``'s numerics through
  ``benchmarks.numerics``, the function the trainer and the evaluation call), device timers, memory;
- :mod:`.flops`: FLOPs per call (FlopCounterMode, CPU SDPA included) and datasheet peaks for MFU;
- :mod:`.suites`: the trainer's own step, batched sliding windows, host syncs, protocol evaluation time;
- :mod:`.data`: data loading against a plain cv2 baseline on real-format files, scoring at native resolution,
  DataLoader throughput;
- :mod:`.report`: tables and the JSON record; :mod:`.cli`: the command line.

The command is ``python -m runners.speed``: it times registered methods with ``runners.train``'s step, which this
layer may not import (datasets -> benchmarks -> methods -> runners), so ``runners.speed`` hands them in.
"""

from .data import bench_loader, bench_loading, bench_scoring, plain_eval_sample, plain_train_sample, write_gta_like
from .flops import PEAK_TFLOPS, count_flops, peak_tflops
from .suites import (TARGETS, TEST_SPLITS, TrainerParts, attention_report, bench_eval, bench_train,
                     estimate_protocol_eval, find_host_syncs, protocol_geometry, synthetic_batch)
from .timing import Mode, baseline_mode, optimized_mode

__all__ = ["PEAK_TFLOPS", "TARGETS", "TEST_SPLITS", "Mode", "TrainerParts", "attention_report", "baseline_mode",
           "bench_eval", "bench_loader", "bench_loading", "bench_scoring", "bench_train", "count_flops",
           "estimate_protocol_eval", "find_host_syncs", "optimized_mode", "peak_tflops", "plain_eval_sample",
           "plain_train_sample", "protocol_geometry", "synthetic_batch", "write_gta_like"]
