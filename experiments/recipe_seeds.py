"""A recipe's spread over seeds: the run its docstring documents, once per seed, timed.

    python -m experiments.recipe_seeds --config configs/fashion_mnist_patchdrop.py \
        --dataset PATH/fashion-mnist --target 0.925 --minutes 20
    python -m experiments.recipe_seeds --config configs/mnist_patchdrop.py \
        --dataset PATH/mnist --target 0.993 --minutes 10

Each seed is `python -m vit_jax.main --config CONFIG --config.dataset=DATASET --config.seed=S`
in its own workdir, one run at a time (the recipes use every core themselves), so its wall-clock
is the recipe's. A recipe's run is deterministic for its seed on one host, so one run is one
sample of the seed (and host) spread: a target holds when the mean over seeds meets it and
every run fits the time. Results: experiments/results/recipe_seeds/NAME/ (README.md with the
table, results.json with every run). Finished runs are kept and skipped, so the command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys

from experiments import sweep as sw


def recipe_name(config: str) -> str:
    return os.path.splitext(os.path.basename(config.partition(":")[0]))[0]


def report(records, *, target: float | None, minutes: float | None) -> sw.Report:
    lines = ["| seed | test accuracy | wall-clock |", "|---|---|---|"]
    for r in sorted(records, key=lambda r: r["seed"]):
        lines.append(f"| {r['seed']} | {100 * r['accuracy']:.2f}% | {minutes_text(r['seconds'])} |")
    if records:
        mean, std = sw.mean_std([r["accuracy"] for r in records])
        slowest = max(r["seconds"] for r in records)
        spread = "" if len(records) < 2 else f" ± {100 * std:.2f}"
        lines.append(f"| **mean** | **{100 * mean:.2f}%{spread}** ({len(records)}) | slowest {minutes_text(slowest)} |")
        verdict = []
        if target is not None:
            verdict.append(f"mean {'meets' if mean >= target else 'misses'} {100 * target:.2f}%")
        if minutes is not None:
            verdict.append(
                f"every run within {minutes:g} min" if slowest <= 60 * minutes else f"a run over {minutes:g} min"
            )
        if verdict:
            lines += ["", "Target: " + "; ".join(verdict) + "."]
    return sw.Report("\n".join(lines), None)


def minutes_text(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)  # rounded first, so 59.6 s reads 1 min 0 s, not 0 min 60 s
    return f"{m} min {s} s"


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the recipe, e.g. configs/fashion_mnist_patchdrop.py")
    ap.add_argument("--dataset", required=True, help="config.dataset, e.g. PATH/fashion-mnist")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default %(default)s)")
    ap.add_argument("--target", type=float, help="the accuracy the mean should reach, e.g. 0.925")
    ap.add_argument("--minutes", type=float, help="the wall-clock every run should fit, e.g. 20")
    ap.add_argument("--root", default=sw.DEFAULT_ROOT, help=f"where the workdirs go (default {sw.DEFAULT_ROOT})")
    ap.add_argument("--results_dir", help="default experiments/results/recipe_seeds/NAME")
    ap.add_argument("--max_runs", type=int, help="start at most this many runs now (the rest on the next call)")
    ap.add_argument("--report_only", action="store_true", help="summarise the finished runs, start none")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    args.jobs = 1
    name = recipe_name(args.config)
    sweep = sw.Sweep(f"recipe-{name}", args.config, [{}], list(range(args.seeds)), {"dataset": args.dataset}, args.root)
    try:
        records, failed = sw.run_sweep(sweep, args)
    except sw.SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outdir = args.results_dir or os.path.join("experiments", "results", "recipe_seeds", name)
    sw.write_results(
        outdir,
        title=f"`{args.config}` over seeds",
        question="What does the recipe give over seeds, run as its docstring says, and does its target hold for "
        "the mean?",
        setting=f"`{args.config}` with `config.dataset` the directory given, `config.seed` 0 to {args.seeds - 1}, "
        "one run at a time; the wall-clock is the whole command's, start-up and evaluations included.",
        command=sw.command_line("experiments.recipe_seeds", argv),
        sweep=sweep,
        records=records,
        report=report(records, target=args.target, minutes=args.minutes),
        extra={"target": args.target, "minutes": args.minutes},
        timing="one at a time, each on every core",
    )
    return sw.finish(failed, outdir)


if __name__ == "__main__":
    sys.exit(main())
