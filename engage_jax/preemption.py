"""Stopping a stage cleanly on SIGTERM (spot / TPU VM preemption, `kill`) or SIGINT (Ctrl-C).

    preemption.install()                 # launchers, once, in the main thread
    with preemption.deferred():          # a stage's loop that has safe points
      for step in ...:
        ...                              # work; then, at a step boundary / after a finished shard:
        preemption.check(on_stop=save)   # raises Preempted if a stop was asked (every process agrees)

Outside `deferred` a signal raises `Preempted` at once (nothing durable is half-written there:
every file is written atomically). Inside, the first signal only records the request and the loop
stops at its next safe point, after writing what it has (a checkpoint; finished shards are already
on disk); a second SIGINT stops at once, a repeated SIGTERM is ignored (launchers forward theirs). The pipeline then records the unfinished attempt and
releases the workdir lock, and the launcher prints one line naming the stage and how to resume, and
exits with 128 + the signal number (143 SIGTERM, 130 SIGINT).

Several processes: each process's request is all-gathered at every safe point (a collective that
every process reaches in the same order), so all of them stop at the same step, none waits on a
peer that has left.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import numpy as np
from jax.experimental import multihost_utils

from engage_jax import multihost

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state = {"signal": None, "deferring": 0}


class Preempted(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
  """The run was asked to stop (by `signum`); the stage stopped at a safe point or at once."""

  def __init__(self, signum: int, at_safe_point: bool, where: str = ""):
    self.signum, self.at_safe_point, self.where = int(signum), at_safe_point, where
    super().__init__(f"{signal.Signals(signum).name} ({'at a safe point' if at_safe_point else 'at once'})")

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def _handler(signum, frame) -> None:
  if _state["signal"] is not None:
    if signum == signal.SIGINT:  # Ctrl-C again: the person insists
      raise Preempted(signum, at_safe_point=False)
    return  # a stop is under way (e.g. writing its checkpoint): a repeated SIGTERM changes nothing
  _state["signal"] = signum
  if _state["deferring"]:
    print(f"[engage_jax] {signal.Signals(signum).name} received: stopping at the next safe point "
          "(send SIGINT again to stop at once)", flush=True)
    return
  raise Preempted(signum, at_safe_point=False)


def install() -> None:
  """SIGTERM and SIGINT → the stop request above (no-op outside the main thread)."""
  if threading.current_thread() is not threading.main_thread():
    return
  for s in _SIGNALS:
    signal.signal(s, _handler)


def requested() -> int | None:
  """The signal number of this process's pending stop request, or None."""
  return _state["signal"]


def reset() -> None:
  """Forgets a request (tests; a launcher never continues after one)."""
  _state["signal"] = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Within: signals are requests honoured at `check`; a request pending on entry is honoured at
  the first `check`."""
  _state["deferring"] += 1
  try:
    yield
  finally:
    _state["deferring"] -= 1


def _agreed() -> int | None:
  """Any process's pending signal (the smallest number), the same on every process."""
  mine = _state["signal"] or 0
  if not multihost.active():
    return mine or None
  every = np.asarray(multihost_utils.process_allgather(np.asarray([mine], np.int32))).ravel()
  asked = [int(s) for s in every if s]
  return min(asked) if asked else None


def check(on_stop: Callable[[], None] | None = None, where: str = "") -> None:
  """A safe point: if any process asked to stop, runs `on_stop` (e.g. saves a checkpoint) and
  raises Preempted on every process. Call it at the same points, in the same order, on every
  process (it is a collective when there are several)."""
  signum = _agreed()
  if signum is None:
    return
  if on_stop is not None:
    on_stop()
  raise Preempted(signum, at_safe_point=True, where=where)
