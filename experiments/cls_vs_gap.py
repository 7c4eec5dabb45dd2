"""cls token against global average pooling, each over a learning-rate sweep (paper, Figure 9).

    python -m experiments.cls_vs_gap --dataset PATH/fashion-mnist [--seeds 3] [--jobs 2]
    python -m experiments.cls_vs_gap --dataset digits --quick

The same ViT (configs/ablation.py) with `model.classifier=token` and `=gap`, each at
learning rates 3e-4, 1e-3, 3e-3 and 1e-2 (33x), 3 seeds. The paper reports the two heads equally good
once each has its own learning rate (GAP wanting a smaller one). The table gives each
head's accuracy at every rate and its best rate; the plot is accuracy against rate.
"""

from __future__ import annotations

import os
import sys

from experiments import sweep as sw

NAME = "cls_vs_gap"
HEADS = ("token", "gap")
RATES = (3e-4, 1e-3, 3e-3, 1e-2)
QUICK_RATES = (1e-3, 3e-3)
QUICK = {"total_steps": 300}


def cells(args) -> list[dict]:
    rates = QUICK_RATES if args.quick else RATES
    return [{"model.classifier": head, "lr.base": lr} for head in HEADS for lr in rates]


def best_per_head(stats: dict) -> dict[str, tuple[float, dict]]:
    """head -> (learning rate, stats) of the cell with the highest mean accuracy."""
    best = {}
    for s in stats.values():
        head, lr = s["overrides"]["model.classifier"], float(s["overrides"]["lr.base"])
        if head not in best or s["mean"] > best[head][1]["mean"]:
            best[head] = (lr, s)
    return best


def report(records, outdir: str) -> sw.Report:
    stats = sw.summarise(records)
    rates = sorted({float(s["overrides"]["lr.base"]) for s in stats.values()})
    cell = {(s["overrides"]["model.classifier"], float(s["overrides"]["lr.base"])): s for s in stats.values()}
    lines = [
        "Test accuracy (%), mean ± standard deviation over seeds (seed count).",
        "",
        "| head | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | best lr | best accuracy |",
        "|---" * (len(rates) + 3) + "|",
    ]
    best = best_per_head(stats)
    for head in HEADS:
        if head not in best:
            continue
        row = [sw.pct(cell.get((head, lr))) for lr in rates]
        lr, s = best[head]
        lines.append(f"| {head} | " + " | ".join(row) + f" | {lr:g} | {sw.pct(s)} |")
    measures = sw.fewshot_measures(stats)
    if measures:  # the paper's own measure (its Figure 9 plots 5-shot linear accuracy) for the same runs
        lines += [
            "",
            "Few-shot linear accuracy (%) of the same trained runs, the paper's measure: a closed-form",
            "least-squares classifier on the frozen pre-logits of N examples per class (seed mean of 3 draws),",
            'on the training dataset and, "transfer", on another dataset.',
            "",
            "| head | measure | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
            "|---|---" + "|---" * len(rates) + "|",
        ]
        for head in HEADS:
            for m in measures:
                row = [sw.fewshot_pct(cell.get((head, lr)), m) for lr in rates]
                lines.append(f"| {head} | {sw.fewshot_header(m)} | " + " | ".join(row) + " |")
    plot = "accuracy_vs_lr.png"
    _plot(cell, rates, os.path.join(outdir, plot))
    return sw.Report("\n".join(lines), plot)


def _plot(cell, rates, path: str) -> None:
    series = {
        ("cls token" if head == "token" else "GAP"): [(lr, cell[(head, lr)]) for lr in rates if (head, lr) in cell]
        for head in HEADS
    }
    sw.accuracy_plot(series, path, xlabel="learning rate", title="cls token vs GAP head")


def describe(sweep: sw.Sweep, args) -> str:
    rates = sorted({c["lr.base"] for c in sweep.cells})
    return (
        f"`{sweep.config}` on `{args.dataset}` ({sw.steps_text(sweep)}); heads {', '.join(HEADS)}; learning "
        f"rates {', '.join(f'{r:g}' for r in rates)}; seeds {sweep.seeds}; every other field as the config. "
        "Accuracy is over the whole test split."
    )


def main(argv=None) -> int:
    return sw.experiment_main(
        argv,
        name=NAME,
        doc=__doc__,
        cells=cells,
        quick_overrides=QUICK,
        title="cls token vs global average pooling",
        question="Do the cls-token head and the GAP head reach the same accuracy once each has its own "
        "learning rate, and do they want different rates (the paper's appendix, Figure 9)?",
        describe=describe,
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
