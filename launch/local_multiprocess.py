"""Starts N processes of one launcher on this machine as one JAX multi-controller program (tests,
debugging; CPU collectives use gloo):

  python launch/local_multiprocess.py --num_processes=2 --devices_per_process=2 -- \\
      launch/pipeline.py --config=configs/sandbox_es.py --workdir=workdirs/mp --config.mesh.data=4

Process i runs `python <launcher> <its flags> --distributed --coordinator_address=127.0.0.1:<free
port> --num_processes=N --process_id=i` with D forced host devices (XLA_FLAGS); its stdout and
stderr go to `<workdir>/logs/process-<i>.log`. When one process fails, the others are killed by
their ids (SIGTERM, then SIGKILL after --grace_s) and this exits with the first failure's code
(1 if that was a signal); it exits 0 when all succeed. --timeout_s bounds the whole run.

SIGTERM / Ctrl-C of this launcher, or a process that stopped on one (exit 130 / 143: a preemption,
engage_jax/preemption.py), give the others --stop_grace_s to reach the same safe point and write
what they have before they are killed; the exit code is then that process's.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def _fail(msg: str) -> None:
  print(f"error: {msg} (command line)", file=sys.stderr)
  sys.exit(2)


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _workdir(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--workdir="):
      return a.split("=", 1)[1]
    if a == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse(argv: list[str]):
  if "--" not in argv:
    _fail("usage: local_multiprocess.py --num_processes=N --devices_per_process=D -- <launcher> <flags>")
  cut = argv.index("--")
  p = argparse.ArgumentParser(prog="local_multiprocess.py", add_help=True)
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=1)
  p.add_argument("--timeout_s", type=float, default=0.0, help="kill everything after this (0: none)")
  p.add_argument("--grace_s", type=float, default=5.0)
  p.add_argument("--stop_grace_s", type=float, default=120.0)
  p.add_argument("--log_dir", default=None, help="default: <workdir>/logs")
  try:
    args = p.parse_args(argv[:cut])
  except SystemExit as e:
    sys.exit(2 if e.code else 0)
  rest = argv[cut + 1:]
  if args.num_processes < 1:
    _fail(f"--num_processes={args.num_processes} must be >= 1")
  if args.devices_per_process < 1:
    _fail(f"--devices_per_process={args.devices_per_process} must be >= 1")
  if not rest or not rest[0].endswith(".py") or not os.path.isfile(rest[0]):
    _fail(f"after '--' give a launcher script and its flags; got {rest[:1] or 'nothing'}")
  bad = [a for a in rest if a.split("=")[0] in ("--distributed", "--coordinator_address",
                                                  "--num_processes", "--process_id")]
  if bad:
    _fail(f"{bad[0]} is set by local_multiprocess.py; drop it from the launcher's flags")
  log_dir = args.log_dir or (os.path.join(_workdir(rest), "logs") if _workdir(rest) else None)
  if log_dir is None:
    _fail("the launcher has no --workdir: give --log_dir")
  return args, rest, log_dir


STOP_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # a process stopped at a safe point


def _kill(procs: list[subprocess.Popen], grace_s: float) -> None:
  live = [p for p in procs if p.poll() is None]
  for p in live:
    p.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  for p in live:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main(argv: list[str]) -> int:
  args, rest, log_dir = parse(argv)

  def _term(*_):
    raise KeyboardInterrupt
  signal.signal(signal.SIGTERM, _term)
  os.makedirs(log_dir, exist_ok=True)
  addr = f"127.0.0.1:{free_port()}"
  procs, logs = [], []
  t0 = time.monotonic()
  try:
    for i in range(args.num_processes):
      env = dict(os.environ)
      env["XLA_FLAGS"] = " ".join(
          [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f] +
          [f"--xla_force_host_platform_device_count={args.devices_per_process}"])
      env.setdefault("JAX_PLATFORMS", "cpu")
      log = open(os.path.join(log_dir, f"process-{i}.log"), "w", encoding="utf-8")
      logs.append(log)
      cmd = [sys.executable, *rest, "--distributed", f"--coordinator_address={addr}",
             f"--num_processes={args.num_processes}", f"--process_id={i}"]
      procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    print(f"[local_multiprocess] {args.num_processes} processes (pids "
          f"{' '.join(str(p.pid) for p in procs)}), coordinator {addr}, logs in {log_dir}", flush=True)
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        _kill(procs, args.stop_grace_s if code in STOP_CODES else args.grace_s)
        print(f"[local_multiprocess] process {i} exited with {code}; stopped the others "
              f"(see {log_dir}/process-{i}.log)", file=sys.stderr, flush=True)
        return code if code > 0 else 1
      if all(c == 0 for c in codes):
        return 0
      if args.timeout_s and time.monotonic() - t0 > args.timeout_s:
        _kill(procs, args.grace_s)
        print(f"[local_multiprocess] timed out after {args.timeout_s:.0f}s; killed all", file=sys.stderr,
              flush=True)
        return 124
      time.sleep(0.2)
  except KeyboardInterrupt:
    _kill(procs, args.stop_grace_s)
    return 130
  finally:
    _kill(procs, args.grace_s)
    for log in logs:
      log.close()


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
