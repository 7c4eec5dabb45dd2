"""The driver behind every experiment: a grid of normal training runs, resumable, summarised.

An experiment is a list of cells (each a set of config overrides) run over several
seeds. Every run is `python -m vit_jax.main --config CONFIG --workdir DIR --config.F=V ...`
in its own workdir, so each one resumes from its checkpoints like any run, and a
finished run leaves `sweep_run.json` beside its metrics: running the experiment again
skips it. A sweep therefore completes over several sittings and survives a kill.

Runs go `--jobs` at a time, each pinned to its own share of the CPU cores (small
models train faster as two one-core runs than as one two-core run). Whatever has
finished is summarised under the results directory: `results.json` (every run's
numbers), a markdown table with mean and standard deviation over seeds, a plot, and a
README.md that also carries `notes.md` (the hand-written reading of the result).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RECORD = "sweep_run.json"
DEFAULT_ROOT = os.path.join("runs", "experiments")


class SweepError(RuntimeError):
    """A problem with the sweep itself (bad arguments, a workdir holding another run)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a cell's overrides plus the seed."""

    cell: str  # the cell's key, e.g. "classifier=gap,lr.base=0.001"
    overrides: tuple[tuple[str, Any], ...]  # the cell's fields, in order
    seed: int
    workdir: str

    def args(self, config: str, common: Sequence[tuple[str, Any]]) -> list[str]:
        fields = [*common, *self.overrides, ("seed", self.seed)]
        return [
            sys.executable,
            "-m",
            "vit_jax.main",
            "--config",
            config,
            "--workdir",
            self.workdir,
            *(f"--config.{k}={format_value(v)}" for k, v in fields),
        ]


def format_value(v: Any) -> str:
    """A value as ml_collections parses it from the command line."""
    if isinstance(v, tuple):  # strings quoted inside: ml_collections reads "(a,)" as the 1-tuple ("(a,)",)
        return "(" + "".join(f"{repr(x) if isinstance(x, str) else format_value(x)}," for x in v) + ")"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def cell_key(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in overrides.items()) or "base"


def _dir_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._=,+-" else "-" for ch in key)


@dataclasses.dataclass
class Sweep:
    """A grid of runs and where they go.

    `cells` are the overrides that differ between cells; `common` are applied to every
    run (the dataset, the user's --set fields). Runs of different settings (config or
    common overrides) never share a workdir: the setting's hash names the directory.
    """

    name: str
    config: str
    cells: list[dict[str, Any]]
    seeds: list[int]
    common: dict[str, Any] = dataclasses.field(default_factory=dict)
    root: str = DEFAULT_ROOT

    @property
    def setting(self) -> dict[str, Any]:
        return {"config": self.config, "common": {k: format_value(v) for k, v in self.common.items()}}

    @property
    def directory(self) -> str:
        digest = hashlib.sha256(json.dumps(self.setting, sort_keys=True).encode()).hexdigest()[:8]
        return os.path.join(self.root, f"{self.name}-{digest}")

    def runs(self) -> list[Run]:
        out = []
        for seed in self.seeds:  # seed-major: a partial sweep has every cell at least once
            for cell in self.cells:
                key = cell_key(cell)
                workdir = os.path.join(self.directory, _dir_name(key), f"seed{seed}")
                out.append(Run(key, tuple(cell.items()), seed, workdir))
        return out


def read_record(run: Run, sweep: Sweep) -> dict[str, Any] | None:
    """The finished run's record, or None. A record of another setting is an error."""
    path = os.path.join(run.workdir, RECORD)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None  # a record cut short by a kill: run again (it resumes from its checkpoints)
    expected = {"setting": sweep.setting, "overrides": {k: format_value(v) for k, v in run.overrides}, "seed": run.seed}
    found = {k: record.get(k) for k in expected}
    if found != expected:
        raise SweepError(f"{path} records a different run ({found}); move that directory away or use another --root.")
    return record


def _pin_and_die_with_parent(cores: Sequence[int] | None):
    def setup():
        if cores:
            os.sched_setaffinity(0, cores)
        try:  # Linux: the run dies with the driver, so a killed sweep leaves no orphan writing its workdir
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return setup


def core_groups(jobs: int) -> list[list[int] | None]:
    """The CPU cores of each of `jobs` slots: an even split of the cores this process may use."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning
        return [None] * jobs
    if jobs > len(cores):
        return [None] * jobs
    size = len(cores) // jobs
    return [cores[i * size : (i + 1) * size] for i in range(jobs)]


def execute(
    sweep: Sweep, *, jobs: int = 1, log: Callable[[str], None] = print, max_runs: int | None = None
) -> tuple[list[dict[str, Any]], list[Run]]:
    """Runs every unfinished run of the sweep; returns (records of finished runs, failed runs)."""
    all_runs = sweep.runs()
    records: dict[Run, dict[str, Any]] = {}
    pending = []
    for run in all_runs:
        record = read_record(run, sweep)
        if record is None:
            pending.append(run)
        else:
            records[run] = record
    if records:
        log(f"{sweep.name}: {len(records)} of {len(all_runs)} runs already finished, skipped")
    if max_runs is not None:
        pending = pending[:max_runs]
    groups = core_groups(jobs)
    free = list(range(jobs))
    active: dict[int, tuple[Run, subprocess.Popen, float, Any]] = {}
    failed: list[Run] = []
    done = len(records)
    try:
        while pending or active:
            while pending and free:
                slot, run = free.pop(0), pending.pop(0)
                os.makedirs(run.workdir, exist_ok=True)
                logfile = open(os.path.join(run.workdir, "train.log"), "a")
                cmd = run.args(sweep.config, list(sweep.common.items()))
                logfile.write("$ " + shlex.join(cmd) + "\n")
                logfile.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_pin_and_die_with_parent(groups[slot]),
                )
                active[slot] = (run, proc, time.time(), logfile)
            time.sleep(0.2)
            for slot, (run, proc, start, logfile) in list(active.items()):
                if proc.poll() is None:
                    continue
                logfile.close()
                del active[slot]
                free.append(slot)
                seconds = time.time() - start
                record = _finish(run, sweep, proc.returncode, seconds)
                label = f"{run.cell} seed {run.seed}"
                if record is None:
                    failed.append(run)
                    log(f"FAILED {label} (exit {proc.returncode}); last lines of {run.workdir}/train.log:")
                    log(_tail(os.path.join(run.workdir, "train.log"), 8))
                else:
                    records[run] = record
                    done += 1
                    log(f"[{done}/{len(all_runs)}] {label}: {100 * record['accuracy']:.2f}% in {seconds:.0f} s")
    finally:
        for _run, proc, _, logfile in active.values():  # interrupted: stop the runs (they resume next time)
            proc.terminate()
            proc.wait()
            logfile.close()
    ordered = [dict(records[r], cell=r.cell, workdir=r.workdir) for r in all_runs if r in records]
    return ordered, failed


def _finish(run: Run, sweep: Sweep, returncode: int, seconds: float) -> dict[str, Any] | None:
    if returncode != 0:
        return None
    try:
        with open(os.path.join(run.workdir, "run.json")) as f:
            final = json.load(f)["final_eval"]
    except (OSError, ValueError, KeyError):
        return None
    record = {
        "setting": sweep.setting,
        "overrides": {k: format_value(v) for k, v in run.overrides},
        "seed": run.seed,
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "count": final["count"],
        "seconds": round(seconds, 1),
    }
    tmp = os.path.join(run.workdir, RECORD + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(run.workdir, RECORD))  # atomic: a kill leaves no half record
    return record


def _tail(path: str, n: int) -> str:
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:]).rstrip()
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------- summaries


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation is nan for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per cell: mean and standard deviation of the accuracy over seeds, and the count; with
    few-shot records, the same of each few-shot measure under 'fewshot' ({'own/5': stats, ...})."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_cell.setdefault(r["cell"], []).append(r)
    out = {}
    for cell, rs in by_cell.items():
        mean, std = mean_std([r["accuracy"] for r in rs])
        out[cell] = {"overrides": rs[0]["overrides"], "mean": mean, "std": std, "n": len(rs)}
        measures = sorted({m for r in rs for m in r.get("fewshot", {})})
        if measures:
            out[cell]["fewshot"] = {}
            for m in measures:
                values = [r["fewshot"][m] for r in rs if m in r.get("fewshot", {})]
                m_mean, m_std = mean_std(values)
                out[cell]["fewshot"][m] = {"mean": m_mean, "std": m_std, "n": len(values)}
    return out


FEWSHOT_SHOTS = (5, 10)
FEWSHOT_SEEDS = (0, 1, 2)
FEWSHOT_FILE = "fewshot.json"


def add_fewshot(records: list[dict[str, Any]], dataset: str, transfer: str | None) -> None:
    """Adds record['fewshot'] = {'own/5': accuracy, 'own/10': ..., 'transfer/5': ...} (seed means)
    to every finished run: few-shot linear accuracy of its final parameters' pre-logits, on its
    own dataset and on `transfer`, computed once per run and kept in WORKDIR/fewshot.json."""
    targets = {"own": dataset, **({"transfer": transfer} if transfer else {})}
    for r in records:
        path = os.path.join(r["workdir"], FEWSHOT_FILE)
        cached = {}
        if os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
        key = json.dumps({"targets": targets, "shots": FEWSHOT_SHOTS, "seeds": FEWSHOT_SEEDS}, sort_keys=True)
        if cached.get("key") != key:
            cached = {"key": key, "values": _fewshot_of_run(r["workdir"], targets)}
            with open(path + ".tmp", "w") as f:
                json.dump(cached, f, indent=1)
            os.replace(path + ".tmp", path)
        r["fewshot"] = cached["values"]


def _fewshot_of_run(workdir: str, targets: dict[str, str]) -> dict[str, float]:
    from vit_jax import data, features, parallel, preprocess, runs

    loaded = runs.from_workdir(workdir)
    sharding = parallel.batch_sharding(parallel.make_mesh(loaded.config.mesh))
    step = features.make_feature_step(loaded.model, preprocess.pp_dict(loaded.config), sharding)
    values = {}
    for label, dataset in targets.items():
        c = features.dataset_config(loaded.config, dataset)
        train, test = data.get_source(c, "train"), data.get_source(c, "test")
        accs = features.fewshot_of_sampled(
            step, loaded.params, train, test, 500, sharding, shots=FEWSHOT_SHOTS, seeds=FEWSHOT_SEEDS
        )
        values.update({f"{label}/{n}": sum(a) / len(a) for n, a in accs.items()})
    return values


def pct(stats: dict[str, Any] | None) -> str:
    """'87.21 ± 0.34 (3)': accuracy in percent, standard deviation over seeds, seed count."""
    if stats is None:
        return "—"
    if math.isnan(stats["std"]):
        return f"{100 * stats['mean']:.2f} (1)"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} ({stats['n']})"


def fewshot_pct(stats: dict[str, Any] | None, measure: str) -> str:
    """A cell's few-shot measure ('own/5', 'transfer/10', ...) as pct() writes accuracies."""
    return pct((stats or {}).get("fewshot", {}).get(measure))


def fewshot_measures(stats: dict[str, dict[str, Any]]) -> list[str]:
    """The few-shot measures the cells have, own dataset first, fewer shots first."""
    found = {m for s in stats.values() for m in s.get("fewshot", {})}
    return sorted(found, key=lambda m: (m.split("/")[0] != "own", int(m.split("/")[1])))


FEWSHOT_HEADERS = {"own": "{n}-shot linear", "transfer": "{n}-shot linear, transfer"}


def fewshot_header(measure: str) -> str:
    where, n = measure.split("/")
    return FEWSHOT_HEADERS[where].format(n=n)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core {cpu} CPU, {platform.system()}, Python {platform.python_version()}"


# ----------------------------------------------------------------------------- plots


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def std_pct(stats: dict[str, Any]) -> float:
    """The standard deviation in percent, 0 where one seed leaves it undefined (an error bar of nothing)."""
    return 0.0 if math.isnan(stats["std"]) else 100 * stats["std"]


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def accuracy_plot(series: dict[str, list[tuple[float, dict[str, Any]]]], path: str, *, xlabel: str, title: str) -> None:
    """Accuracy (mean, error bar one standard deviation) against a log-scaled x, one line per series."""
    fig, ax = pyplot().subplots(figsize=(5, 3.6))
    for (label, points), marker in zip(series.items(), "osd^v<>", strict=False):
        if not points:
            continue
        ax.errorbar(
            [x for x, _ in points],
            [100 * s["mean"] for _, s in points],
            yerr=[std_pct(s) for _, s in points],
            marker=marker,
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def accuracy_bars(bars: dict[str, dict[str, Any]], path: str, *, title: str) -> None:
    """Accuracy (mean, error bar one standard deviation) as one bar per label, the first in grey (the
    reference), the y axis zoomed onto the bars' range."""
    labels = list(bars)
    fig, ax = pyplot().subplots(figsize=(5.5, 3.6))
    means = [100 * bars[k]["mean"] for k in labels]
    errs = [std_pct(bars[k]) for k in labels]
    ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color=["#999999"] + ["#4477aa"] * (len(labels) - 1))
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    lo = min(m - e for m, e in zip(means, errs, strict=True))
    hi = max(m + e for m, e in zip(means, errs, strict=True))
    pad = max(0.5, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


@dataclasses.dataclass
class Report:
    """What an experiment writes: its table (markdown), and the plot it drew."""

    table: str
    plot: str | None  # file name inside the results directory


def write_results(
    results_dir: str,
    *,
    title: str,
    question: str,
    setting: str,
    command: str,
    sweep: Sweep | None,
    records: list[dict[str, Any]],
    report: Report,
    extra: dict[str, Any] | None = None,
    total_runs: int | None = None,
    timing: str | None = None,
) -> None:
    """results.json, table.md and README.md (with notes.md, if written, as the reading).
    `total_runs`: the runs planned, where more than the sweep's; `timing`: how the runs shared
    the machine, where not two at a time."""
    os.makedirs(results_dir, exist_ok=True)
    payload = {
        "title": title,
        "command": command,
        "setting": sweep.setting if sweep else None,
        "seeds": sweep.seeds if sweep else None,
        "runs": records,
        "cells": summarise(records) if records else {},
        **(extra or {}),
    }
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write(report.table.rstrip() + "\n")
    lines = [f"# {title}", "", f"**Question.** {question}", "", f"**Setting.** {setting}", ""]
    lines += [f"Machine: {machine()}.", "", "Command:", "", f"    {command}", ""]
    if sweep is not None:
        total = total_runs or len(sweep.runs())
        lines += [f"Runs finished: {len(records)} of {total}, in workdirs under `{sweep.directory}`."]
        if records:
            minutes = sum(r["seconds"] for r in records) / 60
            timing = timing or "two at a time (`--jobs 2`, the default on 2 cores) the sweep takes about half that"
            lines += [f"Their wall-clock times add up to {minutes:.0f} min; {timing}."]
        lines += [""]
    lines += ["## Result", "", report.table.rstrip(), ""]
    if report.plot:
        lines += [f"![{title}]({report.plot})", ""]
    notes = os.path.join(results_dir, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines += ["## What it says", "", f.read().strip(), ""]
    with open(os.path.join(results_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON: {type(o)}")


# ----------------------------------------------------------------------------- command line


def arg_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="config.dataset: a directory (image folders or IDX files), a TFDS name, or digits (default %(default)s)",
    )
    ap.add_argument(
        "--config",
        help="base run config (default %(default)s; None: configs/ablation.py:digits for digits, else "
        "configs/ablation.py:fashion_mnist)",
    )
    ap.add_argument("--seeds", type=int, help="seeds per cell (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a reduced grid and fewer steps, for a check in minutes")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default: one per core)")
    ap.add_argument("--root", default=DEFAULT_ROOT, help=f"where the run workdirs go (default {DEFAULT_ROOT})")
    ap.add_argument("--results_dir", help="default experiments/results/NAME (NAME-quick under --root with --quick)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="a config override for every run (repeatable)"
    )
    ap.add_argument("--max_runs", type=int, help="start at most this many runs now (the rest on the next call)")
    ap.add_argument("--report_only", action="store_true", help="summarise the finished runs, start none")
    ap.add_argument(
        "--fewshot",
        action="store_true",
        help="also report 5- and 10-shot linear accuracy of each finished run's frozen features (the paper's "
        "measure), on its dataset and on --transfer",
    )
    ap.add_argument("--transfer", help="with --fewshot: a second dataset, e.g. ../shared/data/mnist")
    return ap


def base_config(args) -> str:
    if args.config:
        return args.config
    return "configs/ablation.py:digits" if args.dataset == "digits" else "configs/ablation.py:fashion_mnist"


def common_overrides(args, quick_overrides: dict[str, Any]) -> dict[str, Any]:
    common: dict[str, Any] = {"dataset": args.dataset}
    if args.quick:
        common.update(quick_overrides)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise SweepError(f"--set {item!r}: use FIELD=VALUE, e.g. --set total_steps=500")
        common[field.removeprefix("config.")] = value
    return common


def results_dir(args, name: str) -> str:
    if args.results_dir:
        return args.results_dir
    if args.quick:
        return os.path.join(args.root, f"{name}-quick")
    return os.path.join("experiments", "results", name)


# Flags that change when and how runs happen, not what they compute: left out of the
# command a results file records, so a --report_only or a partial sitting keeps it intact.
_SCHEDULING_FLAGS = {"--report_only": 0, "--max_runs": 1, "--jobs": 1}


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces the results: argv without the scheduling flags."""
    kept, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in _SCHEDULING_FLAGS:
            skip = _SCHEDULING_FLAGS[name] if "=" not in a else 0
            continue
        kept.append(a)
    return shlex.join(["python", "-m", module, *kept])


def run_sweep(sweep: Sweep, args) -> tuple[list[dict[str, Any]], list[Run]]:
    """Executes (unless --report_only) and returns the finished records and the failures."""
    if args.jobs < 1:
        raise SweepError(f"--jobs {args.jobs}: use 1 or more.")
    if args.report_only:
        records = []
        for run in sweep.runs():
            record = read_record(run, sweep)
            if record is not None:
                records.append(dict(record, cell=run.cell, workdir=run.workdir))
        return records, []
    print(
        f"{sweep.name}: {len(sweep.runs())} runs ({len(sweep.cells)} cells x {len(sweep.seeds)} seeds), "
        f"{args.jobs} at a time; workdirs under {sweep.directory}",
        flush=True,
    )
    return execute(sweep, jobs=args.jobs, max_runs=args.max_runs, log=lambda m: print(m, flush=True))


def finish(failed: list[Run], results: str) -> int:
    print(f"Results: {results}/README.md", flush=True)
    if failed:
        print(f"{len(failed)} runs failed: " + "; ".join(f"{r.cell} seed {r.seed}" for r in failed), file=sys.stderr)
        return 1
    return 0


def experiment_main(
    argv: Sequence[str] | None,
    *,
    name: str,
    doc: str,
    cells: Callable[[argparse.Namespace], list[dict[str, Any]]],
    quick_overrides: dict[str, Any],
    title: str,
    question: str,
    describe: Callable[[Sweep, argparse.Namespace], str],
    report: Callable[[list[dict[str, Any]], str], Report],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    defaults: dict[str, Any] | None = None,
) -> int:
    """The command line of one experiment: parse, run the grid, write the results. `defaults`
    replaces the parser's defaults (e.g. {"config": ..., "dataset": ...}) for this experiment."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = arg_parser(doc)
    if add_args:
        add_args(ap)
    if defaults:
        ap.set_defaults(**defaults)
    args = ap.parse_args(argv)
    try:
        seeds = list(range(args.seeds or (1 if args.quick else 3)))
        sweep = Sweep(name, base_config(args), cells(args), seeds, common_overrides(args, quick_overrides), args.root)
        records, failed = run_sweep(sweep, args)
        if args.fewshot and records:
            add_fewshot(records, args.dataset, args.transfer)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    outdir = results_dir(args, name)
    os.makedirs(outdir, exist_ok=True)
    write_results(
        outdir,
        title=title,
        question=question,
        setting=describe(sweep, args),
        command=command_line(f"experiments.{name}", argv),
        sweep=sweep,
        records=records,
        report=report(records, outdir) if records else Report("No run has finished yet.", None),
    )
    return finish(failed, outdir)


def steps_text(sweep: Sweep) -> str:
    steps = sweep.common.get("total_steps")
    return f"{steps} steps" if steps is not None else "the config's steps"
