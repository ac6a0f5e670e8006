"""Float comparisons that hold on any x86-64 CPU, and the environment that subprocess tests pass on.

Why fp32 results differ between machines: XLA:CPU compiles for the widest ISA the CPU has (AVX-512
on some machines here, AVX2 on others), so vector widths, FMA contraction and reduction trees differ
and the same program rounds differently; a program that reduces in another order (another mesh,
another number of processes) differs on one machine too. Each such difference is a few ulps
(fp32 eps = 1.19e-7) of the magnitudes that were summed, so every bound here is relative to the
scale of the values compared. Exact things (token ids, pairs, greedy texts, reports) are compared
exactly elsewhere.

Trained weights need more care than one forward pass: Adam divides by sqrt(v), so an element whose
gradient is near zero can move by up to the learning rate per step when its gradient's last bits
change. That is why no element-wise absolute bound on trained weights holds on every machine; the
norm of the difference relative to the tensor's norm stays tiny (a bug, a missed step or a gradient
averaged over the wrong axis moves it by orders of magnitude more).
"""
from __future__ import annotations

import os

import numpy as np

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def rel_norm_diff(a, b) -> float:
  """||a - b||_F / ||b||_F in float64 (0 when both are zero)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  den = float(np.linalg.norm(b))
  num = float(np.linalg.norm(a - b))
  return num / den if den > 0 else num


def worst_rel_norm_diff(a: dict, b: dict) -> tuple[str, float]:
  """The tensor of two same-keyed weight dicts whose relative norm difference is largest."""
  assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
  return max(((k, rel_norm_diff(a[k], b[k])) for k in a), key=lambda kv: kv[1])


def subprocess_env(devices: int | None = None, **extra: str) -> dict:
  """os.environ plus `extra` for a child process, with this session's other XLA flags kept (an ISA
  cap such as --xla_cpu_max_isa=AVX2 must reach the children) and the forced host device count set
  to `devices` (or removed when None)."""
  env = dict(os.environ, **extra)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
  if devices is not None:
    flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    env.pop("XLA_FLAGS", None)
  return env


def scaled_max_error(a, b, mask=None) -> float:
  """max |a - b| / max(1, max |b|) over `mask` (every element when None), in float64: the error in
  units of the compared values' scale, since fp32 rounding is proportional to it. Values of order
  <= 1 (logits of the tiny seeded test models) keep an absolute bound; larger ones (a real model's
  logits, trained weights) get one relative to their largest magnitude."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if mask is not None:
    a, b = a[mask], b[mask]
  return float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b))))
