"""Inductive bias and data size: a pure ViT against a hybrid on growing training sets (paper, Section 4).

    python -m experiments.data_size --dataset PATH/fashion-mnist [--sizes 1000,5000,20000,60000] [--seeds 3]
    python -m experiments.data_size --dataset digits --quick

Both models are configs/ablation.py's ViT (width, depth, heads, tokens the same). The
hybrid replaces the 4x4 patch embedding by a ResNet root (7x7 stride-2 convolution with
weight standardization, GroupNorm, ReLU, 3x3 stride-2 max-pool; 32 channels) and a 1x1
patch embedding, so it sees the same 7x7 grid of tokens through a convolution's locality
and translation equivariance. Each trains on a fixed class-balanced subset of the
training set (`train_examples`; the same subset for both models and every seed) for the
same number of steps, and is tested on the whole test split. The paper: with little data
the convolution's inductive bias wins; the advantage shrinks as the data grows.
"""

from __future__ import annotations

import os
import sys

from experiments import sweep as sw

NAME = "data_size"
SIZES = (1000, 5000, 20000, 60000)
QUICK_SIZES = (300, 1000)
QUICK = {"total_steps": 300}
MODELS = {
    "ViT": {},
    "hybrid": {"model.resnet.num_layers": (), "model.resnet.width_factor": 0.5, "model.patches.size": (1, 1)},
}


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise sw.SweepError(f"--sizes {text!r}: use comma-separated example counts, e.g. 1000,5000") from None
    if not sizes or min(sizes) <= 0:
        raise sw.SweepError(f"--sizes {text!r}: every size must be a positive count.")
    return sizes


def add_args(ap) -> None:
    ap.add_argument(
        "--sizes",
        help=f"training-set sizes (default {','.join(map(str, SIZES))}; "
        f"{','.join(map(str, QUICK_SIZES))} with --quick)",
    )


def cells(args) -> list[dict]:
    sizes = _sizes(args.sizes) if args.sizes else (QUICK_SIZES if args.quick else SIZES)
    return [{**overrides, "train_examples": n} for overrides in MODELS.values() for n in sizes]


def model_of(overrides: dict) -> str:
    return "hybrid" if "model.resnet.num_layers" in overrides else "ViT"


def report(records, outdir: str) -> sw.Report:
    stats = sw.summarise(records).values()
    table = {(model_of(s["overrides"]), int(s["overrides"]["train_examples"])): s for s in stats}
    sizes = sorted({n for _, n in table})
    lines = [
        "Test accuracy (%) by training-set size, mean ± standard deviation over seeds (seed count).",
        "",
        "| model | " + " | ".join(f"{n:,}" for n in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for model in MODELS:
        lines.append(f"| {model} | " + " | ".join(sw.pct(table.get((model, n))) for n in sizes) + " |")
    if all((m, n) in table for m in MODELS for n in sizes):
        diffs = [100 * (table[("hybrid", n)]["mean"] - table[("ViT", n)]["mean"]) for n in sizes]
        lines.append("| hybrid minus ViT (points) | " + " | ".join(f"{d:+.2f}" for d in diffs) + " |")
    plot = "accuracy_vs_data.png"
    _plot(table, sizes, os.path.join(outdir, plot))
    return sw.Report("\n".join(lines), plot)


def _plot(table, sizes, path: str) -> None:
    series = {model: [(n, table[(model, n)]) for n in sizes if (model, n) in table] for model in MODELS}
    sw.accuracy_plot(series, path, xlabel="training examples", title="Accuracy against data size")


def describe(sweep: sw.Sweep, args) -> str:
    sizes = sorted({c["train_examples"] for c in sweep.cells})
    return (
        f"`{sweep.config}` on `{args.dataset}` ({sw.steps_text(sweep)} for every size); the ViT as the "
        f"config and the hybrid ({', '.join(f'`{k}={sw.format_value(v)}`' for k, v in MODELS['hybrid'].items())}); "
        f"training sets of {', '.join(f'{n:,}' for n in sizes)} examples (`train_examples`); seeds {sweep.seeds}. "
        "Accuracy is over the whole test split."
    )


def main(argv=None) -> int:
    return sw.experiment_main(
        argv,
        name=NAME,
        doc=__doc__,
        cells=cells,
        quick_overrides=QUICK,
        title="Inductive bias and data size: ViT against a hybrid",
        question="With little training data, does a convolutional stem's inductive bias beat the pure ViT, and "
        "does that advantage shrink as the data grows (the paper's Section 4)?",
        describe=describe,
        report=report,
        add_args=add_args,
    )


if __name__ == "__main__":
    sys.exit(main())
