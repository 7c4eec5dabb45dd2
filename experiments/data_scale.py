"""Start-up time and memory of a run on an image folder, at 500 and at 5,000 images.

    python -m experiments.data_scale --make DIR        # DIR/n500 and DIR/n5000, photo-like JPEGs
    python -m experiments.data_scale --data DIR [--rounds 3]

Each run is `python -m vit_jax.main` on the quick-start model with 16x16 patches at 224 px, batch
32, 3 steps, in a fresh workdir; measured from the process start to its first training record
(`step 1/3`), and the peak resident memory of the training process (its decode workers are
processes of their own, the same two at both sizes). The two sizes alternate; the first round
lists each folder, the later ones read the cached listing. Results: a table on stdout and
experiments/results/data_scale.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from experiments.input_speed import ROOT, photo_jpegs

SIZES = (500, 5000)


def make(data: str) -> None:
    for n in SIZES:
        photo_jpegs(os.path.join(data, f"n{n}", "train"), n, 0)
        photo_jpegs(os.path.join(data, f"n{n}", "test"), 100, 1)
        print(f"{n} + 100 JPEGs in {os.path.join(data, f'n{n}')}")


def one_run(folder: str) -> dict:
    """(seconds to the first training record, peak resident MiB) of one run on `folder`."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "vit_jax.main", "--config", "configs/quickstart.py"]
        cmd += [f"--config.dataset={folder}", "--config.pp.crop=224", "--config.pp.channels=3", "--config.batch=32"]
        cmd += ["--config.model.patches.size=(16,16)", "--config.total_steps=3", "--config.progress_every=1"]
        cmd += ["--config.eval_every=1000", "--config.lr.warmup_steps=0"]
        cmd += ["--config.checkpoint_every=1000", "--workdir", workdir]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = None
        for line in proc.stdout:
            if first is None and "step 1/3" in line:
                first = time.perf_counter() - t
        proc.wait()
        if proc.returncode or first is None:
            raise RuntimeError(f"the run on {folder} failed (exit status {proc.returncode})")
    return {"first_record_s": first}


def measure(data: str, rounds: int) -> dict:
    runs = {n: [] for n in SIZES}
    for r in range(rounds):
        for n in SIZES:
            result = one_run(os.path.join(data, f"n{n}"))
            runs[n].append(result)
            print(f"round {r + 1}, {n} images: {result['first_record_s']:.2f} s to the first record", flush=True)
    return {"date": time.strftime("%Y-%m-%d"), "runs": {str(n): v for n, v in runs.items()}}


def peak_rss(data: str, n: int) -> float:
    """The training process's peak resident memory (MiB) of one run, started from a process of its
    own (the peak of a process's children is a running maximum over all of them)."""
    code = (
        "import resource, sys; from experiments.data_scale import one_run; one_run(sys.argv[1]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, os.path.join(data, f"n{n}")], cwd=ROOT, capture_output=True)
    return float(out.stdout.decode().strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make", metavar="DIR")
    parser.add_argument("--data", metavar="DIR")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.make:
        make(args.make)
    if args.data:
        result = measure(args.data, args.rounds)
        result["peak_rss_mib"] = {str(n): [peak_rss(args.data, n) for _ in range(args.rounds)] for n in SIZES}
        with open(os.path.join(ROOT, "experiments", "results", "data_scale.json"), "w") as f:
            json.dump(result, f, indent=1)
        for n in SIZES:
            times = [r["first_record_s"] for r in result["runs"][str(n)]]
            rss = result["peak_rss_mib"][str(n)]
            span = f"{min(times):.2f}-{max(times):.2f} s, peak {min(rss):.0f}-{max(rss):.0f} MiB"
            print(f"{n:5d} images: first record after {span}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
