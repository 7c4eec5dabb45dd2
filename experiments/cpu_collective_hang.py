"""How often a data-parallel step on two XLA CPU devices stops in an all-reduce, and the fix.

With `XLA_FLAGS=--xla_force_host_platform_device_count=2` (README, Speed: two CPU devices for
small models), the gradient of each weight that a data-parallel step computes is summed over the
two devices by an all-reduce. On the 2-core host with JAX 0.10.2, when a step with several
all-reduces is started while the previous step still runs (JAX's asynchronous dispatch), the
run now and then stops for good: the CPU goes idle, and after XLA's termination timeout (40 s by
default) the process aborts with "Termination timeout for `all reduce ...` exceeded" (signal 6).
Waiting for each step before starting the next (what vit_jax's train and evaluation loops do
on several CPU devices: parallel.one_program_at_a_time) avoids it.

This script measures both on a program that holds nothing of this project: a gradient step of
MATRICES independent linear layers on a batch split over the two devices (one all-reduce per
layer, plus the loss's), STEPS steps in each of RUNS fresh processes, with one-thread ops per
device (the recipes' setting). Each child lowers the timeouts
(`--xla_cpu_collective_call_*_timeout_seconds`) so that a stuck run costs seconds.

    python -m experiments.cpu_collective_hang --runs 10 --steps 300 --matrices 1,4

Prints one line per setting: matrices, dispatch (`overlapping`: each step started as soon as
Python gets to it; `one-at-a-time`: after the previous one finished), runs, and runs that
aborted.
"""

import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

steps, matrices, wait = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "wait"
assert len(jax.devices()) == 2, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
x = jax.device_put(np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32), split)
ws = jax.device_put([np.eye(128, dtype=np.float32) for _ in range(matrices)], whole)


def loss(ws, x):
    return sum(jnp.mean((x @ w - x) ** 2) for w in ws)


@jax.jit
def step(ws, x):
    value, grads = jax.value_and_grad(loss)(ws, x)
    return [w - 1e-3 * g for w, g in zip(ws, grads)], value


for _ in range(steps):
    ws, value = step(ws, x)
    if wait:
        jax.block_until_ready(ws)
print("done", float(value))
"""


def one_run(steps: int, matrices: int, wait: bool, timeout_s: int) -> int:
    """The exit status of one fresh process (-6: aborted by XLA)."""
    flags = [
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_multi_thread_eigen=false",
        f"--xla_cpu_collective_call_warn_stuck_timeout_seconds={max(1, timeout_s // 2)}",
        f"--xla_cpu_collective_call_terminate_timeout_seconds={timeout_s}",
    ]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    args = [sys.executable, "-c", CHILD, str(steps), str(matrices), "wait" if wait else "overlap"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600).returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per setting")
    parser.add_argument("--steps", type=int, default=300, help="data-parallel steps per process")
    parser.add_argument("--matrices", default="1,4", help="independent layers (all-reduces) per step, comma-separated")
    parser.add_argument("--timeout", type=int, default=6, help="seconds before XLA aborts a stuck all-reduce")
    args = parser.parse_args(argv)
    print("matrices dispatch runs aborted")
    for matrices in [int(m) for m in args.matrices.split(",")]:
        for name, wait in (("overlapping", False), ("one-at-a-time", True)):
            codes = [one_run(args.steps, matrices, wait, args.timeout) for _ in range(args.runs)]
            print(matrices, name, args.runs, sum(c != 0 for c in codes), flush=True)


if __name__ == "__main__":
    main()
