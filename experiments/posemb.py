"""Position embeddings: none, learned 1-D, learned 2-D, relative, fixed 2-D sin-cos (paper, Table 8).

    python -m experiments.posemb --dataset PATH/fashion-mnist [--seeds 3] [--jobs 2]
    python -m experiments.posemb --dataset digits --quick

The same ViT (configs/ablation.py) with each `model.posemb`, 3 seeds, same budget. The
paper (ViT-B/16, 5-shot ImageNet linear probe) finds any position embedding far better
than none and the kinds nearly equal; its numbers stand beside ours in the table.
"""

from __future__ import annotations

import os
import sys

from experiments import sweep as sw

NAME = "posemb"
KINDS = ("none", "learn", "learn_2d", "relative", "sincos2d")
QUICK_KINDS = ("none", "learn", "relative")
QUICK = {"total_steps": 300}
LABELS = {
    "none": "none",
    "learn": "learned 1-D",
    "learn_2d": "learned 2-D",
    "relative": "relative",
    "sincos2d": "sin-cos 2-D (fixed)",
}
# Table 8 of the paper: ViT-B/16, 5-shot linear probe on ImageNet (%); sin-cos is not in it.
PAPER = {"none": 61.382, "learn": 64.206, "learn_2d": 64.001, "relative": 64.032}


def cells(args) -> list[dict]:
    return [{"model.posemb": kind} for kind in (QUICK_KINDS if args.quick else KINDS)]


def report(records, outdir: str) -> sw.Report:
    stats = {s["overrides"]["model.posemb"]: s for s in sw.summarise(records).values()}
    kinds = [k for k in KINDS if k in stats]
    measures = sw.fewshot_measures(stats)
    lines = [
        'Accuracy (%), mean ± standard deviation over seeds (seed count). "fine-tuned" is the trained',
        "model's test accuracy; \"N-shot linear\" is the paper's measure: a closed-form least-squares",
        "classifier on the frozen pre-logits of N training examples per class (seed mean of 3 draws), on",
        'the training dataset and, "transfer", on another dataset. The paper\'s column is its Table 8',
        "(ViT-B/16, 5-shot linear on ImageNet), the same measure on a different task.",
        "",
        "| position embedding | `model.posemb` | fine-tuned | "
        + "".join(f"{sw.fewshot_header(m)} | " for m in measures)
        + "paper, Table 8 (5-shot) |",
        "|---|---|---|" + "---|" * len(measures) + "---|",
    ]
    for k in kinds:
        paper = f"{PAPER[k]:.1f}" if k in PAPER else "—"
        few = "".join(f"{sw.fewshot_pct(stats[k], m)} | " for m in measures)
        lines.append(f"| {LABELS[k]} | `{k}` | {sw.pct(stats[k])} | {few}{paper} |")
    if "none" in stats:
        others = [stats[k]["mean"] for k in kinds if k != "none"]
        if others:
            gap = 100 * (min(others) - stats["none"]["mean"])
            spread = 100 * (max(others) - min(others))
            lines += [
                "",
                f"Worst embedding minus none: {gap:+.2f} points (paper: +2.6); "
                f"spread between the embeddings: {spread:.2f} points (paper: 0.2).",
            ]
    plot = "posemb.png"
    sw.accuracy_bars({LABELS[k]: stats[k] for k in kinds}, os.path.join(outdir, plot), title="Position embeddings")
    return sw.Report("\n".join(lines), plot)


def describe(sweep: sw.Sweep, args) -> str:
    kinds = [c["model.posemb"] for c in sweep.cells]
    return (
        f"`{sweep.config}` on `{args.dataset}` ({sw.steps_text(sweep)}); `model.posemb` in {', '.join(kinds)}; "
        f"seeds {sweep.seeds}; every other field as the config (cls-token head). Accuracy is over the whole "
        "test split."
    )


def main(argv=None) -> int:
    return sw.experiment_main(
        argv,
        name=NAME,
        doc=__doc__,
        cells=cells,
        quick_overrides=QUICK,
        title="Position embeddings",
        question="Does any position embedding beat none by a wide margin, while learned 1-D, learned 2-D and "
        "relative embeddings barely differ (the paper's Table 8)?",
        describe=describe,
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
