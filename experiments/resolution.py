"""Fine-tuning at a higher resolution, with interpolated position embeddings (paper, Section 3.2; FixRes).

    python -m experiments.resolution --dataset PATH/fashion-mnist [--seeds 3] [--jobs 2]
    python -m experiments.resolution --dataset digits --quick

The small ViT of configs/ablation.py, its patch size fixed, so a higher resolution is a longer
sequence. Five arms, each over the seeds:
  (a) train at the low resolution (the whole image resized to `low` px) and evaluate there;
  (b) (a)'s model fine-tuned briefly at the high resolution, its position embeddings
      interpolated to the new grid by load_pretrained (the original's spline), its head kept;
  (c) the same fine-tune with the position embeddings freshly initialised (pretrained_fresh);
  (d) the high resolution from scratch, for the training FLOPs of (a) plus (b);
  (e) (a)'s model evaluated at several resolutions without fine-tuning, its embeddings
      interpolated the same way: FixRes's test-resolution curve.
Training uses Inception crops (`area_min` of the image and up), the paper's and FixRes's
augmentation: objects look larger in training than in the whole test image, the discrepancy
FixRes measured. FLOPs per step are XLA's count of the compiled train step (vit_jax.benchmark).
(a) and (d) run first, then (b) and (c) from each seed's (a), then the curve of (e).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from experiments import sweep as sw

NAME = "resolution"
POSEMB = "Transformer/posembed_input"
CURVE_FILE = "resolution_curve.json"


@dataclasses.dataclass(frozen=True)
class Setting:
    low: int  # (a)'s resolution, px
    high: int  # the fine-tune's and (d)'s
    test_sizes: tuple[int, ...]  # (e)'s
    steps: int  # (a)'s training steps
    fine_tune_steps: int  # (b)'s and (c)'s
    fine_tune_lr: float
    fine_tune_warmup: int
    area_min: float | None  # Inception crops from this fraction of the image (None: the config's)


FULL = Setting(20, 28, (12, 16, 20, 24, 28, 32, 36), 1500, 300, 2e-4, 30, 0.5)  # Fashion-MNIST: 5x5 -> 7x7 patches
QUICK = Setting(6, 8, (4, 6, 8, 10, 12), 150, 50, 2e-4, 10, None)  # digits: 3x3 -> 4x4 patches


def setting(args) -> Setting:
    return QUICK if args.quick else FULL


# ----------------------------------------------------------------------------- compute


def load_config(args, overrides: dict[str, Any]):
    """The base config with `overrides`, parsed from the command line a run gets, so resolved as
    the runs resolve it."""
    from vit_jax import main as vit_main

    argv = ["vit_jax.main", "--config", sw.base_config(args)]
    argv += [f"--config.{k}={sw.format_value(v)}" for k, v in overrides.items()]
    saved, sys.argv = sys.argv, argv  # ml_collections finds the --config.FIELD flags in sys.argv
    try:
        return vit_main.parse(argv)[0]
    finally:
        sys.argv = saved


def count_flops(args, s: Setting, common: dict[str, Any]) -> dict[int, dict[str, float]]:
    """XLA's FLOPs, per size: of one training step (the sizes trained at) and of one image's
    forward pass (every size). Counted in a fresh process: the runs are forked from this one,
    which must not have started JAX's threads."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_count_flops, args, s, common).result()


def _count_flops(args, s: Setting, common: dict[str, Any]) -> dict[int, dict[str, float]]:
    from vit_jax import benchmark, train

    base = load_config(args, common)
    num_classes = train.load_data(base)[0].num_classes
    out: dict[int, dict[str, float]] = {}
    for size in sorted({s.low, s.high, *s.test_sizes}):
        c = base.copy_and_resolve_references()
        c.pp.crop = size
        out[size] = {"image": benchmark.step_flops(c, num_classes, c.batch, "infer") / c.batch}
        if size in (s.low, s.high):
            out[size]["train"] = benchmark.step_flops(c, num_classes, c.batch, "train")
    return out


def arms(s: Setting, flops: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each arm's overrides. (d)'s steps: the FLOPs of (a) plus (b), at (d)'s cost per step."""
    low, high = flops[s.low]["train"], flops[s.high]["train"]
    d_steps = round((s.steps * low + s.fine_tune_steps * high) / high)
    fine_tune = {
        "pp.crop": s.high,
        "total_steps": s.fine_tune_steps,
        "lr.base": s.fine_tune_lr,
        "lr.warmup_steps": s.fine_tune_warmup,
    }
    return {
        "a": {"pp.crop": s.low, "total_steps": s.steps},
        "d": {"pp.crop": s.high, "total_steps": d_steps},
        "b": fine_tune,
        "c": {**fine_tune, "pretrained_fresh": (POSEMB,)},
    }


def training_flops(arm: str, a: dict[str, Any], s: Setting, flops: dict[int, dict[str, float]]) -> float:
    """The training FLOPs behind an arm's model: a fine-tune's include (a)'s; (e) is (a)'s model."""
    per_step = {"a": flops[s.low]["train"], "d": flops[s.high]["train"]}
    own = {"a": s.steps * per_step["a"], "d": int(a["d"]["total_steps"]) * per_step["d"]}
    own["b"] = own["c"] = own["a"] + s.fine_tune_steps * flops[s.high]["train"]
    own["e"] = own["a"]
    return own[arm]


# ----------------------------------------------------------------------------- runs


def first_sweep(args, s: Setting, a: dict[str, Any], common: dict[str, Any]) -> sw.Sweep:
    return sw.Sweep(NAME, sw.base_config(args), [a["a"], a["d"]], seeds(args), common, args.root)


def fine_tune_sweep(args, a: dict[str, Any], common: dict[str, Any], seed: int, a_workdir: str) -> sw.Sweep:
    start = {"pretrained_path": os.path.join(a_workdir, "model.npz"), "pretrained_keep_head": True}
    return sw.Sweep(f"{NAME}-finetune", sw.base_config(args), [a["b"], a["c"]], [seed], {**common, **start}, args.root)


def seeds(args) -> list[int]:
    return list(range(args.seeds or (1 if args.quick else 3)))


def run_all(args, s: Setting, a: dict[str, Any], common: dict[str, Any]):
    """(a) and (d), then each seed's fine-tunes; returns (records by arm, failed runs)."""
    first = first_sweep(args, s, a, common)
    records, failed = sw.run_sweep(first, args)
    a_key = sw.cell_key(a["a"])
    by_arm: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": [], "d": []}
    for r in records:
        by_arm["a" if r["cell"] == a_key else "d"].append(r)
    for r in by_arm["a"]:
        ft = fine_tune_sweep(args, a, common, r["seed"], r["workdir"])
        ft_records, ft_failed = sw.run_sweep(ft, args)
        failed += ft_failed
        b_key = sw.cell_key(a["b"])
        for f in ft_records:
            by_arm["b" if f["cell"] == b_key else "c"].append(f)
    return by_arm, failed


def curve(a_workdir: str, sizes: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """(e): the model of `a_workdir` evaluated at each size, its position embeddings interpolated
    by load_pretrained, without training; kept in the workdir for the next report."""
    path = os.path.join(a_workdir, CURVE_FILE)
    if os.path.exists(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("sizes") == list(sizes):
            return cached["results"]
    results = {str(size): evaluate_at(a_workdir, size) for size in sizes}
    with open(path + ".tmp", "w") as f:
        json.dump({"sizes": list(sizes), "results": results}, f, indent=1)
    os.replace(path + ".tmp", path)
    return results


def evaluate_at(a_workdir: str, size: int) -> dict[str, float]:
    import jax

    from vit_jax import checkpoint, models, parallel, train
    from vit_jax import config as config_lib

    config = config_lib.read(os.path.join(a_workdir, "config.json"))
    config.pp.crop = size
    test = train.load_data(config)[1]  # per size: a streaming source resizes on the host, to pp.crop
    prog = train.build(config, test.num_classes, steps=1)
    init = parallel.to_host(prog.init_state(jax.random.PRNGKey(0))["params"])
    params = checkpoint.load_pretrained(
        pretrained_path=os.path.join(a_workdir, "model.npz"),
        init_params=init,
        model_config=prog.model_kw,
        new_grid_shape=models.grid_shape(prog.model_kw, (size, size)),
        keep_head=True,
    )
    params = jax.device_put(params, prog.state_shardings["params"])
    start = time.time()
    result = train.evaluate(prog.eval_step, params, test, config_lib.eval_batch(config), prog.data_sharding)
    return dict(result, seconds=round(time.time() - start, 1))


# ----------------------------------------------------------------------------- report

ARM_TEXT = {
    "a": "train at the low resolution",
    "b": "(a) fine-tuned at the high resolution, position embeddings interpolated",
    "c": "(a) fine-tuned at the high resolution, position embeddings fresh",
    "d": "the high resolution from scratch, the FLOPs of (a) + (b)",
}


def arm_rows(by_arm, s: Setting, a: dict[str, Any], flops) -> dict[str, dict[str, Any]]:
    """Per arm: accuracy statistics, training FLOPs, steps, and the mean wall-clock of the runs
    behind its model (a fine-tune's includes its (a))."""
    a_seconds = {r["seed"]: r["seconds"] for r in by_arm["a"]}
    rows = {}
    for arm, records in by_arm.items():
        if not records:
            continue
        mean, std = sw.mean_std([r["accuracy"] for r in records])
        behind = [r["seconds"] + (a_seconds.get(r["seed"], 0.0) if arm in "bc" else 0.0) for r in records]
        rows[arm] = {
            "mean": mean,
            "std": std,
            "n": len(records),
            "flops": training_flops(arm, a, s, flops),
            "steps": int(a[arm]["total_steps"]),
            "seconds": sum(behind) / len(behind),
            "train_px": s.high if arm != "a" else s.low,
        }
    return rows


def curve_rows(curves: list[dict[str, dict[str, float]]], flops) -> dict[int, dict[str, Any]]:
    out = {}
    for size in sorted({int(k) for c in curves for k in c}):
        values = [c[str(size)]["accuracy"] for c in curves if str(size) in c]
        mean, std = sw.mean_std(values)
        out[size] = {"mean": mean, "std": std, "n": len(values), "gflops_image": flops[size]["image"] / 1e9}
    return out


def report(rows, curve_stats, s: Setting, patch: int, outdir: str) -> sw.Report:
    d_flops = rows["d"]["flops"] if "d" in rows else None
    lines = [
        "Test accuracy (%), mean ± standard deviation over seeds (seed count). Training FLOPs: XLA's count",
        "of the compiled train step times the steps, (a)'s included in a fine-tune's; wall-clock: the mean",
        "over seeds of the runs behind the model (start-up and evaluation included).",
        "",
        "| arm | | trained at | steps | training TFLOPs | of (d)'s | wall-clock | test accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in "abcd":
        if arm not in rows:
            continue
        r = rows[arm]
        share = f"{r['flops'] / d_flops:.2f}" if d_flops else "—"
        steps = f"{s.steps} + {r['steps']}" if arm in "bc" else str(r["steps"])
        lines.append(
            f"| ({arm}) | {ARM_TEXT[arm]} | {r['train_px']} px | {steps} | {r['flops'] / 1e12:.2f} | {share} "
            f"| {r['seconds'] / 60:.1f} min | {sw.pct(r)} |"
        )
    lines += [
        "",
        f"(e) (a)'s model at each test resolution, no fine-tuning ({s.low} px is where it was trained):",
        "",
        "| test resolution | patch grid | forward GFLOPs per image | test accuracy |",
        "|---|---|---|---|",
    ]
    for size, c in curve_stats.items():
        mark = " (trained)" if size == s.low else ""
        grid = f"{size // patch}x{size // patch}"
        lines.append(f"| {size} px{mark} | {grid} | {c['gflops_image']:.4f} | {sw.pct(c)} |")
    lines += ["", *summary_lines(rows, curve_stats, s)]
    plot = "resolution.png"
    draw(rows, curve_stats, s, os.path.join(outdir, plot))
    return sw.Report("\n".join(lines), plot)


def summary_lines(rows, curve_stats, s: Setting) -> list[str]:
    out = []
    if {"b", "d"} <= rows.keys():
        gap = 100 * (rows["b"]["mean"] - rows["d"]["mean"])
        out.append(
            f"(b) minus (d): {gap:+.2f} points, at {rows['b']['flops'] / rows['d']['flops']:.2f} of (d)'s training "
            f"FLOPs; (b) minus (a): {100 * (rows['b']['mean'] - rows['a']['mean']):+.2f} points for "
            f"{s.fine_tune_steps} steps at {s.high} px."
        )
    if {"b", "c"} <= rows.keys():
        worth = 100 * (rows["b"]["mean"] - rows["c"]["mean"])
        out.append(f"Interpolated minus fresh position embeddings, (b) - (c): {worth:+.2f} points.")
    if curve_stats:
        best = max(curve_stats, key=lambda k: curve_stats[k]["mean"])
        out.append(
            f"(e): best test resolution {best} px ({100 * curve_stats[best]['mean']:.2f}%), trained at {s.low} px."
        )
    return out


def draw(rows, curve_stats, s: Setting, path: str) -> None:
    plt = sw.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm, r in rows.items():
        left.errorbar(
            [r["flops"] / 1e12], [100 * r["mean"]], yerr=[sw.std_pct(r)], marker="o", capsize=3, label=f"({arm})"
        )
        left.annotate(f"({arm})", (r["flops"] / 1e12, 100 * r["mean"]), textcoords="offset points", xytext=(6, 4))
    left.set_xlabel("training TFLOPs")
    left.set_ylabel("test accuracy (%)")
    left.set_title(f"Arms: {s.low} px, fine-tuned or trained at {s.high} px")
    left.grid(alpha=0.3)
    sizes = list(curve_stats)
    means, errors = [100 * curve_stats[k]["mean"] for k in sizes], [sw.std_pct(curve_stats[k]) for k in sizes]
    right.errorbar(sizes, means, yerr=errors, marker="s", capsize=3, label="(e) (a) without fine-tuning")
    for arm, style in (("a", "--"), ("b", ":")):
        if arm in rows:
            right.axhline(
                100 * rows[arm]["mean"], linestyle=style, color="grey", label=f"({arm}) at {rows[arm]['train_px']} px"
            )
    right.axvline(s.low, color="#cccccc", linewidth=1)
    right.set_xlabel("test resolution (px)")
    right.set_title("(e) Test-resolution curve")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    sw.save_figure(fig, path)


# ----------------------------------------------------------------------------- command line


def describe(args, s: Setting, a: dict[str, Any], common: dict[str, Any]) -> str:
    crops = f"Inception crops from {s.area_min:g} of the image" if s.area_min else "the config's crops"
    return (
        f"`{sw.base_config(args)}` on `{args.dataset}`, {crops}, every other field as the config; the whole "
        f"test image resized to the evaluation's resolution. (a) {s.low} px for {s.steps} steps; (b) and (c) "
        f"{s.fine_tune_steps} steps at {s.high} px from (a)'s model, lr {s.fine_tune_lr:g} after "
        f"{s.fine_tune_warmup} warm-up steps, cosine decay, (a)'s head kept; (d) {a['d']['total_steps']} steps at "
        f"{s.high} px; (e) test sizes {', '.join(str(t) for t in s.test_sizes)} px. Seeds {seeds(args)}. Runs "
        f"go `--jobs` at a time, each on its own share of the cores."
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = sw.arg_parser(__doc__).parse_args(argv)
    s = setting(args)
    try:
        common = sw.common_overrides(args, {})
        if s.area_min is not None:
            common = {"pp.area_min": s.area_min, **common}
        flops = count_flops(args, s, common)
        a = arms(s, flops)
        by_arm, failed = run_all(args, s, a, common)
    except sw.SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    curves = [curve(r["workdir"], s.test_sizes) for r in by_arm["a"]]
    rows, curve_stats = arm_rows(by_arm, s, a, flops), curve_rows(curves, flops)
    outdir = sw.results_dir(args, NAME)
    os.makedirs(outdir, exist_ok=True)
    patch = int(load_config(args, common).model.patches.size[0])
    records = [dict(r, arm=arm) for arm, rs in by_arm.items() for r in rs]
    sw.write_results(
        outdir,
        title="Fine-tuning at a higher resolution",
        question="Does a model trained at a low resolution gain from a brief fine-tune at a higher one, with its "
        "position embeddings interpolated, and how close does that come to training at the high resolution "
        "from scratch for the same compute (the paper's 224 -> 384 px)? Is a model best tested somewhat above "
        "its training resolution (FixRes)?",
        setting=describe(args, s, a, common),
        command=sw.command_line(f"experiments.{NAME}", argv),
        sweep=first_sweep(args, s, a, common),
        records=records,
        report=report(rows, curve_stats, s, patch, outdir),
        extra={
            "arms": rows,
            "curve": curve_stats,
            "curves": curves,
            "flops": flops,
            "setting_fields": dataclasses.asdict(s),
        },
        total_runs=4 * len(seeds(args)),
        timing="(a) and (d), then each seed's (b) and (c), went two at a time, each on one core",
    )
    return sw.finish(failed, outdir)


if __name__ == "__main__":
    sys.exit(main())
