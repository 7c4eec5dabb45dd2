"""What each ingredient of the small-data recipe adds: none, +RandAugment, +Mixup, both, +EMA.

    python -m experiments.augreg --dataset PATH/cifar10-subset [--seeds 3] [--jobs 2] [--set total_steps=N]
    python -m experiments.augreg --dataset digits --config configs/ablation.py:digits --quick

The ViT of configs/cifar10_subset.py (the default config; dataset default: TFDS `cifar10`,
whose `train[:4000]` and `test[:1000]` the config names) trained five ways, 3 seeds each:

* none: the basic augmentation only (the config's pad-and-crop and flips);
* +RandAugment: RandAugment, 2 layers at magnitude 10;
* +Mixup: Mixup with alpha 0.2;
* +both: RandAugment and Mixup;
* +EMA: both, evaluated with the exponential moving average of the parameters (decay 0.999
  with warm-up) in place of the parameters themselves.

Every arm sets all five fields, so the arms do not depend on what the config chooses for them;
every other field (model, optimizer, weight decay, label smoothing, steps) is the config's.
AugReg's question at our scale: with 4,000 images, how much does each ingredient buy?
"""

from __future__ import annotations

import os
import sys

from experiments import sweep as sw

NAME = "augreg"
DEFAULTS = {"config": "configs/cifar10_subset.py", "dataset": "cifar10"}
RANDAUG_LAYERS, RANDAUG_MAGNITUDE = 2, 10.0
MIXUP_ALPHA = 0.2
EMA_DECAY = 0.999


def _arm(randaug: bool, mixup: bool, ema: bool) -> dict:
    return {
        "pp.randaug.num_layers": RANDAUG_LAYERS if randaug else 0,
        "pp.randaug.magnitude": RANDAUG_MAGNITUDE,
        "mixup.alpha": MIXUP_ALPHA if mixup else 0.0,
        "ema_decay": EMA_DECAY if ema else 0.0,
        "ema_warmup": True,
    }


ARMS = {
    "none": _arm(False, False, False),
    "+RandAugment": _arm(True, False, False),
    "+Mixup": _arm(False, True, False),
    "+both": _arm(True, True, False),
    "+EMA": _arm(True, True, True),
}
QUICK = {"total_steps": 100}


def cells(args) -> list[dict]:
    return [dict(overrides) for overrides in ARMS.values()]


def _on(overrides: dict) -> tuple[bool, bool, bool]:
    """Which of RandAugment, Mixup and EMA a cell's overrides switch on (values may be strings, as
    the sweep records them)."""
    return (
        int(overrides["pp.randaug.num_layers"]) > 0,
        float(overrides["mixup.alpha"]) > 0,
        float(overrides["ema_decay"]) > 0,
    )


def arm_of(overrides: dict) -> str:
    """The arm's name from a cell's overrides."""
    on = _on(overrides)
    for name, arm in ARMS.items():
        if _on(arm) == on:
            return name
    raise ValueError(f"overrides {overrides} are none of the arms {list(ARMS)}")


# For each arm, the arm it adds one ingredient to.
BASELINE = {"+RandAugment": "none", "+Mixup": "none", "+both": "none", "+EMA": "+both"}


def report(records, outdir: str) -> sw.Report:
    stats = {arm_of(s["overrides"]): s for s in sw.summarise(records).values()}
    by_seed = {}
    for r in records:
        by_seed.setdefault(arm_of(r["overrides"]), {})[r["seed"]] = r["accuracy"]
    lines = [
        "Test accuracy (%), mean ± standard deviation over seeds (seed count). The last column is the",
        "gain over the arm named there, in points, the mean over the seeds both arms have of the paired",
        "difference (the same seed draws the same initialisation and the same batches in every arm).",
        "",
        "| arm | RandAugment | Mixup | EMA | test accuracy | gain |",
        "|---|---|---|---|---|---|",
    ]
    for name, arm in ARMS.items():
        if name not in stats:
            continue
        marks = [
            f"{arm['pp.randaug.num_layers']}, {arm['pp.randaug.magnitude']:g}" if arm["pp.randaug.num_layers"] else "—",
            f"{arm['mixup.alpha']:g}" if arm["mixup.alpha"] else "—",
            f"{arm['ema_decay']:g}" if arm["ema_decay"] else "—",
        ]
        gain = "—"
        base = BASELINE.get(name)
        if base in by_seed:
            seeds = sorted(set(by_seed[name]) & set(by_seed[base]))
            if seeds:
                diff = sum(by_seed[name][s] - by_seed[base][s] for s in seeds) / len(seeds)
                gain = f"{100 * diff:+.2f} over {base}"
        lines.append(f"| {name} | " + " | ".join(marks) + f" | {sw.pct(stats[name])} | {gain} |")
    plot = "augreg.png"
    arms = {a: stats[a] for a in ARMS if a in stats}
    sw.accuracy_bars(arms, os.path.join(outdir, plot), title="Small-data recipe: what each ingredient adds")
    return sw.Report("\n".join(lines), plot)


def describe(sweep: sw.Sweep, args) -> str:
    return (
        f"`{sweep.config}` on `{args.dataset}` ({sw.steps_text(sweep)}); arms {', '.join(ARMS)} "
        f"(RandAugment {RANDAUG_LAYERS} layers at magnitude {RANDAUG_MAGNITUDE:g}, Mixup alpha {MIXUP_ALPHA:g}, "
        f"EMA decay {EMA_DECAY:g} with warm-up); seeds {sweep.seeds}; every other field as the config. "
        "Accuracy is over the whole test split."
    )


def main(argv=None) -> int:
    return sw.experiment_main(
        argv,
        name=NAME,
        doc=__doc__,
        cells=cells,
        quick_overrides=QUICK,
        title="AugReg at small scale: what augmentation and averaging add",
        question="Training from scratch on a small dataset, how much test accuracy does each ingredient of the "
        "recipe add: RandAugment, Mixup, both, and evaluating an exponential moving average of the parameters "
        "(the AugReg paper's question, at 4,000 images)?",
        describe=describe,
        report=report,
        defaults=DEFAULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
