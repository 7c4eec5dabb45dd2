"""Benchmark a model's forward pass and train step against the machine's matmul rate.

    python -m vit_jax.benchmark --model ViT-B_16 --image_size 224 --batch 8 --mode both

Reports compile time, median step time (with min and max), images per second,
FLOPs per image from XLA's cost analysis of the compiled step, the achieved FLOP/s,
and the same process's measured float32 matmul rate with the ratio of the two (model
FLOP utilisation against the measured limit). Absolute times drift between runs on
a shared CPU; the ratio within one run is the figure to compare.
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax import models


def _time(fn: Callable[[], Any], steps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def matmul_rate(dtype=jnp.float32, n: int = 4096, steps: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` (median of `steps`)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n**3 / float(np.median(_time(lambda: f(a, b), steps)))


def compiled_flops(compiled) -> float | None:
    """FLOPs of a compiled computation from XLA's cost analysis (None if unavailable)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def make_train_step(model, tx):
    """A plain supervised step: softmax cross-entropy, gradients, optimizer update."""

    def step(params, opt_state, images, labels, rng):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _measure_infer(model, params, images, labels, steps):
    """(compile seconds, step times, FLOPs) of the jitted forward pass."""
    t0 = time.perf_counter()
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(params, images).compile()
    compile_s = time.perf_counter() - t0
    return compile_s, _time(lambda: compiled(params, images), steps), compiled_flops(compiled)


def _measure_train(model, params, images, labels, steps):
    """(compile seconds, step times, FLOPs) of a jitted SGD-momentum train step."""
    tx = optax.sgd(1e-3, momentum=0.9)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    compiled = make_train_step(model, tx).lower(params, tx.init(params), images, labels, key).compile()
    compile_s = time.perf_counter() - t0
    # The step donates its inputs: give it copies so `params` stays valid.
    state = {"params": jax.tree.map(jnp.copy, params), "opt": tx.init(params)}

    def one():
        state["params"], state["opt"], loss = compiled(state["params"], state["opt"], images, labels, key)
        return loss

    return compile_s, _time(one, steps), compiled_flops(compiled)


def run(
    model_name: str,
    image_size: int,
    batch: int,
    steps: int,
    modes: list[str],
    num_classes: int = 1000,
    **model_kw: Any,
):
    model = models.get_model(model_name, num_classes=num_classes, **model_kw)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, image_size, image_size, 3)), jnp.float32)
    labels = jax.nn.one_hot(jnp.asarray(rng.integers(0, num_classes, batch)), num_classes)
    params = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"])(images[:1])

    limit_before = matmul_rate()
    results = []
    for mode in modes:
        measure = _measure_infer if mode == "infer" else _measure_train
        compile_s, times, flops = measure(model, params, images, labels, steps)
        results.append(dict(mode=mode, compile_s=compile_s, times=times, flops=flops))
    limit = max(limit_before, matmul_rate())

    report = []
    for r in results:
        med = float(np.median(r["times"]))
        achieved = r["flops"] / med if r["flops"] else None
        report.append(
            dict(
                model=model_name,
                attention=model.attention_impl,
                image_size=image_size,
                batch=batch,
                mode=r["mode"],
                step_ms=med * 1e3,
                step_ms_min=min(r["times"]) * 1e3,
                step_ms_max=max(r["times"]) * 1e3,
                images_per_s=batch / med,
                compile_s=r["compile_s"],
                gflops_per_image=r["flops"] / batch / 1e9 if r["flops"] else None,
                achieved_gflops=achieved / 1e9 if achieved else None,
                matmul_f32_gflops=limit / 1e9,
                utilisation=achieved / limit if achieved else None,
                steps=steps,
                backend=jax.default_backend(),
                devices=jax.device_count(),
            )
        )
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B_16", help="registered model name, e.g. ViT-B_16 or B/16")
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="print one JSON object per mode")
    ap.add_argument("--attention", default="auto", help="attention_impl: auto, fused, einsum, dot_product_attention")
    args = ap.parse_args(argv)
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    for r in run(args.model, args.image_size, args.batch, args.steps, modes, attention_impl=args.attention):
        if args.json:
            print(json.dumps(r))
            continue
        util = f"{100 * r['utilisation']:.0f}%" if r["utilisation"] else "n/a"
        print(
            f"{r['model']} {r['image_size']}px batch {r['batch']} attention={r['attention']} {r['mode']:5s}: "
            f"{r['step_ms']:.1f} ms/step (min {r['step_ms_min']:.1f}, max {r['step_ms_max']:.1f}), "
            f"{r['images_per_s']:.1f} img/s, compile {r['compile_s']:.1f} s, "
            f"{r['gflops_per_image']:.2f} GFLOP/img, {r['achieved_gflops']:.0f} GFLOP/s achieved, "
            f"f32 matmul {r['matmul_f32_gflops']:.0f} GFLOP/s, utilisation {util}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
