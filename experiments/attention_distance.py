"""Mean attention distance by depth, of the cls-token and the GAP model (paper, Figure 7 right).

    python -m experiments.attention_distance --dataset PATH/fashion-mnist [--num_images 512]
    python -m experiments.attention_distance --dataset digits --quick

Trains nothing: it reads the models `experiments.cls_vs_gap` trained with the same
arguments (--dataset, --config, --set, --quick, --root), takes each head's best learning
rate and every seed there, and measures the mean attention distance of every head in
every block (vit_jax.analysis: the attention-weighted distance in pixels between the
query patch and the attended patches, averaged over the test images). The paper finds
some heads attending locally in the lowest blocks while every head attends globally in
the deep ones.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

from experiments import cls_vs_gap
from experiments import sweep as sw

NAME = "attention_distance"


def add_args(ap) -> None:
    ap.add_argument("--num_images", type=int, default=512, help="test images averaged over (default 512)")


def measure(workdir: str, num_images: int) -> tuple[np.ndarray, float]:
    """((blocks, heads) mean attention distance in pixels, the uniform-attention value) of a run."""
    from vit_jax import analysis, data, preprocess, runs

    loaded = runs.from_workdir(workdir)
    source = data.get_source(loaded.config, "test")
    images = np.asarray(preprocess.preprocess_eval(source.first_images(num_images), loaded.pp))
    distances = analysis.mean_attention_distance(loaded.model, loaded.params, images)
    grid, cell = analysis.token_grid(loaded.model, images.shape[1:3])
    uniform = float(analysis.patch_distances(grid, cell).mean())
    return np.asarray(distances), uniform


def report(models: dict[str, dict], outdir: str) -> sw.Report:
    """models: head -> {"lr", "seeds", "distances": (seeds, blocks, heads), "uniform"}."""
    blocks = next(iter(models.values()))["distances"].shape[1]
    heads = list(models)
    lines = [
        "Mean attention distance (pixels) per block: the lowest head / the mean over heads / the highest head,",
        "each averaged over the seeds (± standard deviation over seeds of the mean over heads).",
        "",
        "| block | " + " | ".join(f"{_label(h)} (lr {models[h]['lr']:g})" for h in heads) + " |",
        "|---" * (len(heads) + 1) + "|",
    ]
    for b in range(blocks):
        row = []
        for h in heads:
            d = models[h]["distances"][:, b, :]  # (seeds, heads)
            mean, std = sw.mean_std(list(d.mean(axis=1)))
            spread = "" if math.isnan(std) else f" ± {std:.1f}"
            row.append(f"{d.min(axis=1).mean():.1f} / {mean:.1f}{spread} / {d.max(axis=1).mean():.1f}")
        lines.append(f"| {b} | " + " | ".join(row) + " |")
    uniform = next(iter(models.values()))["uniform"]
    lines += ["", f"Uniform attention over the token grid would give {uniform:.2f} px."]
    plot = "attention_distance.png"
    _plot(models, os.path.join(outdir, plot))
    return sw.Report("\n".join(lines), plot)


def _label(head: str) -> str:
    return "cls token" if head == "token" else "GAP"


def _plot(models: dict[str, dict], path: str) -> None:
    fig, axes = sw.pyplot().subplots(1, len(models), figsize=(4.2 * len(models), 3.8), sharey=True, squeeze=False)
    for ax, (head, m) in zip(axes[0], models.items(), strict=True):
        d = m["distances"]  # (seeds, blocks, heads)
        seeds, blocks, nheads = d.shape
        for h in range(nheads):
            for s in range(seeds):
                x = np.arange(blocks) + (s - (seeds - 1) / 2) * 0.08
                ax.scatter(x, d[s, :, h], s=12, color=f"C{h}", label=f"head {h}" if s == 0 else None)
        ax.axhline(m["uniform"], color="gray", ls="--", lw=1, label="uniform attention")
        ax.set_xticks(np.arange(blocks))
        ax.set_xlabel("Network depth (block)")
        plural = "s" if seeds > 1 else ""
        ax.set_title(f"{_label(head)} (lr {m['lr']:g}, {seeds} seed{plural})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Mean attention distance (pixels)")
    axes[0][-1].legend(fontsize=7)
    sw.save_figure(fig, path)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = sw.arg_parser(__doc__)
    add_args(ap)
    args = ap.parse_args(argv)
    try:
        seeds = list(range(args.seeds or (1 if args.quick else 3)))
        source = sw.Sweep(
            cls_vs_gap.NAME,
            sw.base_config(args),
            cls_vs_gap.cells(args),
            seeds,
            sw.common_overrides(args, cls_vs_gap.QUICK),
            args.root,
        )
        records = [
            dict(r, cell=run.cell, workdir=run.workdir)
            for run in source.runs()
            if (r := sw.read_record(run, source)) is not None
        ]
        if not records:
            raise sw.SweepError(
                f"No finished cls_vs_gap run under {source.directory}: run "
                f"`python -m experiments.cls_vs_gap {' '.join(_sweep_args(argv))}` first."
            )
    except sw.SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = cls_vs_gap.best_per_head(sw.summarise(records))
    models = {}
    for head in cls_vs_gap.HEADS:
        if head not in best:
            continue
        lr = best[head][0]
        runs = [
            r for r in records if r["overrides"]["model.classifier"] == head and float(r["overrides"]["lr.base"]) == lr
        ]
        per_seed = []
        for r in runs:
            distances, uniform = measure(r["workdir"], args.num_images)
            per_seed.append(distances)
            print(
                f"{_label(head)} lr {lr:g} seed {r['seed']}: "
                + ", ".join(f"block {b} {row.min():.1f}-{row.max():.1f}" for b, row in enumerate(distances)),
                flush=True,
            )
        models[head] = {
            "lr": lr,
            "seeds": [r["seed"] for r in runs],
            "distances": np.stack(per_seed),
            "uniform": uniform,
            "workdirs": [r["workdir"] for r in runs],
        }
    outdir = sw.results_dir(args, NAME)
    os.makedirs(outdir, exist_ok=True)
    sw.write_results(
        outdir,
        title="Mean attention distance by depth",
        question="Do some heads attend locally in the lowest blocks while the deeper blocks attend globally "
        "(the paper's Figure 7, right), and does the head (cls token or GAP) change that?",
        setting=f"the models of experiments.cls_vs_gap (`{source.config}` on `{args.dataset}`, "
        f"{sw.steps_text(source)}), each head at its best learning rate, seeds {seeds}; distances averaged over "
        f"the first {args.num_images} test images, in input pixels.",
        command=sw.command_line(f"experiments.{NAME}", argv),
        sweep=None,
        records=[],
        report=report(models, outdir),
        extra={"models": models, "num_images": args.num_images},
    )
    print(f"Results: {outdir}/README.md")
    return 0


def _sweep_args(argv: list[str]) -> list[str]:
    """argv without this command's own flags (what cls_vs_gap takes)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--num_images":
            skip = True
            continue
        if a.startswith("--num_images="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
