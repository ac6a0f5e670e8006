"""A 2-process program whose processes see different directories (`<root>/p<i>`): check_shared_dir
must refuse it. Run by test_multiprocess.py through launch/local_multiprocess.py."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--root", required=True)
  p.add_argument("--distributed", action="store_true")
  p.add_argument("--coordinator_address")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  a = p.parse_args()
  import jax
  jax.distributed.initialize(a.coordinator_address, a.num_processes, a.process_id)
  from engage_jax import errors, multihost
  root = os.path.join(a.root, f"p{jax.process_index()}")
  os.makedirs(root, exist_ok=True)
  try:
    multihost.check_shared_dir(root)
  except errors.InputError as e:
    errors.fail(e)
  print("shared: ok")


if __name__ == "__main__":
  main()
