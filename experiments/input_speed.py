"""The host input pipeline against the original release's, on the same photo-like JPEGs.

    python -m experiments.input_speed --make DIR [--train 3000 --test 300]
    python -m experiments.input_speed --data DIR --original SRC [--rounds 3 --steps 40]

`--make` writes photo-like JPEGs (long side 300 to 640 px, aspect ratio 1:2 to 2:1, about 70 KB
at quality 95: crops of scikit-learn's two bundled sample photos, each with its own scale,
colour gains and sensor-like noise) as an image folder DIR/folder/{train,test}/c<k>/, and the
same files as a TFDS dataset `photo_jpegs` in DIR/tfds, prepared as TFRecord and then converted
(`vit_jax.data.prepare`) so that the very same records are also readable as ArrayRecord.

The timing runs, in alternating rounds, each in a fresh process:
- `original`: the original release's `input_pipeline.get_data_from_tfds` (imported from its
  source tree SRC, a checkout of google-research/vision_transformer, unchanged) on DIR/tfds,
  iterated as NumPy batches: its crop (5% to 100% of the area), flip and resize to 224 in
  tf.data, batch 64;
- `folder` and `tfds`: `python -m vit_jax.benchmark --mode input` on the image folder and on
  the ArrayRecord copy: listing or index, the host crop (the same area range, flips, 224 px,
  decoded by `config.data_workers` processes), and the batch put on the device.
- `grain` (with --grain, after `pip install grain`): the same decode function (this project's
  worker task, whole batches of 64 in the image folder) fed through Grain's
  `MapDataset(...).mp_prefetch` with as many worker processes, instead of `vit_jax.data.pool`.
Results: a table on stdout and experiments/results/input_speed.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 64
# Both timing scripts: 5 batches untimed, then {steps} timed from an iterator.
TIMED = """
def timed(it):
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    for _ in range({steps}):
        next(it)
    dt = (time.perf_counter() - t) / {steps}
    print(json.dumps({{"images_per_s": {batch} / dt}}), flush=True)
"""
ORIGINAL = (
    """
import importlib.util, json, os, sys, time
import ml_collections
"""
    + TIMED
    + """
spec = importlib.util.spec_from_file_location("original_input_pipeline", sys.argv[1])
ip = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ip)
c = ml_collections.ConfigDict(dict(dataset="photo_jpegs", tfds_data_dir=os.environ["TFDS_DATA_DIR"],
    tfds_manual_dir=None, batch={batch}, batch_eval={batch}, shuffle_buffer=50_000,
    pp=dict(train="train", test="test", crop=224)))
timed(ip.get_data_from_tfds(config=c, mode="train").as_numpy_iterator())
"""
)


def photo_jpegs(out_dir: str, count: int, seed: int) -> list[int]:
    """`count` photo-like JPEGs in out_dir/c<k>/ (module doc); their sizes in bytes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(count):
        photo = photos[i % len(photos)]
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        long_side = int(rng.integers(300, 641))
        w, h = (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)
        scale = rng.uniform(0.5, 1.0)
        box_w = min(photo.width, photo.height * aspect) * scale
        box_h = box_w / aspect
        x0, y0 = rng.uniform(0, photo.width - box_w), rng.uniform(0, photo.height - box_h)
        pixels = np.asarray(photo.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + box_w, y0 + box_h)), np.float32)
        pixels = pixels * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 5, pixels.shape)
        cls_dir = os.path.join(out_dir, f"c{i % 10}")
        os.makedirs(cls_dir, exist_ok=True)
        path = os.path.join(cls_dir, f"{i:06d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)
        sizes.append(os.path.getsize(path))
    return sizes


def make(data: str, train: int, test: int) -> None:
    import tensorflow_datasets as tfds
    from etils import epath

    from vit_jax.data import prepare

    folder = os.path.join(data, "folder")
    sizes = photo_jpegs(os.path.join(folder, "train"), train, 0) + photo_jpegs(os.path.join(folder, "test"), test, 1)
    print(f"{len(sizes)} JPEGs in {folder}: mean {np.mean(sizes) / 1e3:.1f} KB")

    class PhotoJpegs(tfds.core.GeneratorBasedBuilder):
        """The folder's JPEG files, stored as they are (no re-encoding)."""

        VERSION = tfds.core.Version("1.0.0")
        pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

        def _info(self):
            features = {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=[f"c{k}" for k in range(10)]),
            }
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(os.path.join(folder, s)) for s in ("train", "test")}

        def _generate_examples(self, split_dir):
            for cls in sorted(os.listdir(split_dir)):
                for name in sorted(os.listdir(os.path.join(split_dir, cls))):
                    yield f"{cls}/{name}", {"image": os.path.join(split_dir, cls, name), "label": cls}

    tfds_dir = os.path.join(data, "tfds")
    PhotoJpegs(data_dir=tfds_dir).download_and_prepare()
    print(prepare.prepare("photo_jpegs", tfds_dir))


def time_original(data: str, source_tree: str, steps: int) -> float:
    pipeline = os.path.join(source_tree, "vit_jax", "input_pipeline.py")
    env = dict(os.environ, TFDS_DATA_DIR=os.path.join(data, "tfds"), TF_CPP_MIN_LOG_LEVEL="2")
    code = ORIGINAL.format(batch=BATCH, steps=steps)
    out = subprocess.run([sys.executable, "-c", code, pipeline], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def time_ours(data: str, kind: str, steps: int) -> dict:
    dataset = [f"--config.dataset={os.path.join(data, 'folder')}"]
    if kind == "tfds":
        dataset = ["--config.dataset=photo_jpegs", f"--config.tfds_data_dir={os.path.join(data, 'tfds')}"]
    cmd = [sys.executable, "-m", "vit_jax.benchmark", "--config", "configs/vit.py:b16,photo_jpegs", *dataset]
    cmd += ["--mode", "input", "--batch", str(BATCH), "--steps", str(steps), "--json"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


GRAIN = (
    """
import json, os, sys, time
import grain
import numpy as np
from absl import flags
from vit_jax.configs import defaults
from vit_jax.data import get_source, worker
from vit_jax.data.index import global_batch_indices
from vit_jax.data.pool import Job

flags.FLAGS.mark_as_parsed()  # grain reads absl flags
"""
    + TIMED
    + """


class Batch:
    def __init__(self, source):
        self.source = source

    def __call__(self, step):
        s = self.source
        job = Job(s.reader, s.key, "train", s.spec, global_batch_indices(0, step, len(s), {batch}), np.arange({batch}),
                  step=step)
        header, images = worker.run_task(job.task(0, {batch}, True), s.reader)
        return {{"image": images, "label": header["labels"]}}


if __name__ == "__main__":
    c = defaults.get_config()
    c.dataset, c.pp.crop = sys.argv[1], 224
    source = get_source(c, "train")
    workers = os.cpu_count()
    ds = grain.MapDataset.range(0, 10**6).map(Batch(source)).to_iter_dataset(grain.ReadOptions(num_threads=0))
    timed(iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))))
    time.sleep(60)  # the caller stops this process and its workers once it has read the line
"""
)


def time_grain(data: str, steps: int) -> float:
    script = os.path.join(data, "grain_input_speed.py")
    with open(script, "w") as f:
        f.write(GRAIN.format(batch=BATCH, steps=steps))
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, script, os.path.join(data, "folder")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        for line in proc.stdout:  # the result, then the process and its workers go
            if line.startswith("{"):
                return json.loads(line)["images_per_s"]
        raise RuntimeError(f"the Grain run printed no result (exit status {proc.wait()})")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def measure(data: str, source_tree: str, rounds: int, steps: int, grain: bool = False) -> dict:
    runs = {"original": [], "folder": [], "tfds": []} | ({"grain": []} if grain else {})
    for r in range(rounds):
        runs["original"].append(time_original(data, source_tree, steps))
        for kind in ("folder", "tfds"):
            runs[kind].append(time_ours(data, kind, steps)["images_per_s"])
        if grain:
            runs["grain"].append(time_grain(data, steps))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in runs.items()), flush=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "batch": BATCH,
        "steps": steps,
        "images_per_s": runs,
        "ratio_to_original": {k: [a / b for a, b in zip(v, runs["original"], strict=True)] for k, v in runs.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make", metavar="DIR", help="write the JPEGs and their TFDS copies into DIR")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--data", metavar="DIR", help="a DIR written by --make, to time")
    parser.add_argument("--original", metavar="SRC", help="a checkout of google-research/vision_transformer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed batches per run")
    parser.add_argument("--grain", action="store_true", help="also time Grain's workers (pip install grain)")
    args = parser.parse_args(argv)
    if args.make:
        make(args.make, args.train, args.test)
    if args.data:
        if not args.original:
            parser.error("--data needs --original SRC, the original release's source tree")
        result = measure(args.data, args.original, args.rounds, args.steps, args.grain)
        os.makedirs(os.path.join(ROOT, "experiments", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "experiments", "results", "input_speed.json"), "w") as f:
            json.dump(result, f, indent=1)
        for kind, ratios in result["ratio_to_original"].items():
            rates = result["images_per_s"][kind]
            span = f"{min(rates):6.0f}-{max(rates):6.0f} img/s, {min(ratios):.2f}-{max(ratios):.2f}x"
            print(f"{kind:8s} {span} the original")
    return 0


if __name__ == "__main__":
    sys.exit(main())
