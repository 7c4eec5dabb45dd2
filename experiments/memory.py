"""Memory of the train step per device, and the largest batch that fits on hosts of each kind.

    python -m experiments.memory [--models b16,l16,h14] [--devices 8] [--batches 32,64]

For each model, the paper's pre-training step (configs/pretrain.py: Adam, float32
parameters and compute, 224 px, scan over the blocks with full remat) is compiled, not
run, by `vit_jax.benchmark --steps 0` in a fresh process, once with every device
holding the whole state (`sharding=replicate`, one device) and once with the state
split over `--devices` CPU devices (`mesh=(('fsdp', -1),)`, `sharding=fsdp`), each at
two per-device batches. XLA's buffer assignment gives the peak bytes per device;
two batches give a line: fixed bytes (parameters, gradients, optimizer state,
workspace) plus bytes per image (activations). From the line, the largest per-device
batch that fits each host kind's device memory.

The figures are XLA's CPU buffer assignment of the same program a GPU or TPU would
compile; on those backends layouts and fusion differ, so the host rows other than
this machine are estimates, to be checked with `vit_jax.benchmark` on the device
(its `device peak` column). Writes experiments/results/memory/{README.md,results.json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30

# (name, devices per host, GiB per device)
HOSTS = (
    ("this machine: 2-core CPU, 24 GiB", 1, 24),
    ("TPU v3-8 or v5e-8 host: 8 x 16 GiB", 8, 16),
    ("TPU v4 host: 4 chips x 32 GiB", 4, 32),
    ("8 x A100/H100 80 GB", 8, 80),
    ("8 x H200 141 GB", 8, 141),
)


def compile_bytes(model: str, layout: str, devices: int, per_device: int) -> dict:
    """Peak bytes per device of the compiled train step (a fresh process, so the device count can be set)."""
    cmd = [sys.executable, "-m", "vit_jax.benchmark", "--config", f"configs/pretrain.py:imagenet2012,{model}"]
    cmd += ["--config.model.scan=True", "--config.model.remat=full", "--config.accum_steps=1"]
    cmd += ["--steps=0", "--mode=train", "--matmul_size=256", "--json", f"--cpu_devices={devices}"]
    cmd += [f"--batch={per_device * devices}"]
    if layout == "fsdp":
        cmd += ["--config.mesh=(('fsdp',-1),)", "--config.sharding=fsdp"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"bytes": r["xla_memory_bytes"], "compile_s": r["compile_s"], "gflops_per_image": r["gflops_per_image"]}


def param_count(model: str) -> int:
    """Parameters of the step's model, from the abstract train state (nothing allocated)."""
    import jax
    import numpy as np

    from vit_jax import config as config_lib
    from vit_jax import train

    config = config_lib.load_file(os.path.join(ROOT, "configs", f"pretrain.py:imagenet2012,{model}"))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    state = jax.eval_shape(train.build(config, 1000, steps=1, mesh=mesh).init_state, jax.random.PRNGKey(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state["params"]))


def fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    """(fixed bytes, bytes per image) from two (per-device batch, bytes) points."""
    (b0, m0), (b1, m1) = points
    per_image = (m1 - m0) / (b1 - b0)
    return m0 - per_image * b0, per_image


def largest_batch(fixed: float, per_image: float, gib: float) -> int:
    return max(0, int((gib * GIB - fixed) // per_image)) if per_image > 0 else 0


def report(rows: list[dict], devices: int, command: str) -> str:
    lines = [
        "# Train-step memory per device, and what fits on one host",
        "",
        "Question: how much device memory does a ViT training step need, with the state replicated or split",
        "over the host's devices (`config.sharding=fsdp`), and what is the largest batch per device each kind",
        "of host holds?",
        "",
        "Setting: the paper's pre-training step (`configs/pretrain.py`: Adam, float32 parameters and compute,",
        "224 px, `model.scan=True`, `model.remat=full`, no accumulation), compiled by `vit_jax.benchmark",
        f"--steps 0`; replicated on one device, and fsdp over {devices} CPU devices. Peak bytes per device",
        "from XLA's buffer assignment at two per-device batches, fitted as fixed + per image x batch.",
        "",
        "| model | parameters | layout | fixed per device | per image | compile |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.0f} M | {r['layout']} | {r['fixed'] / GIB:.2f} GiB | "
            f"{r['per_image'] / 2**20:.0f} MiB | {r['compile_s']:.1f} s |"
        )
    lines += [
        "",
        "Largest per-device batch that fits (replicated / fsdp over the host's devices; the fsdp fixed part",
        f"scaled from {devices} devices to the host's count; 0 = does not fit):",
        "",
        "| host | " + " | ".join(sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)) + " |",
        "|---" * (1 + len({r["model"] for r in rows})) + "|",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["model"], r["layout"]): r for r in rows}
    for host, n, gib in HOSTS:
        cells = []
        for m in models:
            rep, sh = by[(m, "replicate")], by[(m, "fsdp")]
            b_rep = largest_batch(rep["fixed"], rep["per_image"], gib)
            if n == 1:
                cells.append(f"{b_rep}")
                continue
            # The split state scales with 1 / devices: fixed = rest + state / devices.
            state = 16 * rep["params"]
            fixed_n = sh["fixed"] - state / devices + state / n
            cells.append(f"{b_rep} / {largest_batch(fixed_n, sh['per_image'], gib)}")
        lines.append(f"| {host} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="b16,l16,h14")
    ap.add_argument("--devices", type=int, default=8, help="CPU devices the fsdp layout is split over")
    ap.add_argument("--batches", default="32,64", help="two per-device batches to fit the line through")
    ap.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results", "memory"))
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if len(batches) != 2 or batches[0] == batches[1]:
        raise SystemExit("--batches takes two different per-device batches, e.g. 32,64")
    rows = []
    for model in args.models.split(","):
        params = param_count(model)
        for layout, devices in (("replicate", 1), ("fsdp", args.devices)):
            runs = [compile_bytes(model, layout, devices, b) for b in batches]
            fixed, per_image = fit([(b, r["bytes"]) for b, r in zip(batches, runs, strict=True)])
            row = dict(model=model, params=params, layout=layout, devices=devices, fixed=fixed, per_image=per_image)
            row.update(points=[(b, r["bytes"]) for b, r in zip(batches, runs, strict=True)])
            row.update(compile_s=max(r["compile_s"] for r in runs))
            print(
                f"{model} {layout} x{devices}: fixed {fixed / GIB:.2f} GiB, {per_image / 2**20:.0f} MiB per image",
                flush=True,
            )
            rows.append(row)
    os.makedirs(args.results_dir, exist_ok=True)
    command = "python -m experiments.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(args.results_dir, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    text = report(rows, args.devices, command.strip())
    with open(os.path.join(args.results_dir, "README.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
