"""The paper's evaluation protocol on any checkpoint: few-shot linear, kNN and linear probe.

    python -m vit_jax.evaluate --workdir runs/quickstart [--datasets digits,PATH,...] [--shots 1,5,10,25]
    python -m vit_jax.evaluate --checkpoint ViT-B_16.npz --datasets cifar10 --image_size 224 [--json]
    python -m vit_jax.evaluate --checkpoint hf-hub:timm/vit_base_patch16_224.augreg_in21k --datasets DIR

Prints, for each dataset, few-shot linear accuracy per shot count (mean and standard deviation
over the seeds), weighted kNN and linear-probe accuracy, all on the frozen pre-logits. With
--json, one JSON object {dataset: {"fewshot": {"5": mean, ...}, "knn": acc, "linear_probe": acc}}.
A run's own dataset is the default with --workdir. Each dataset's features (its train split, the
pool the shots are drawn from, and its test split) are computed once and shared by the three.
"""

import argparse
import json
import sys


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="a training run's workdir")
    ap.add_argument("--checkpoint", help="published weights: .npz, a timm/transformers directory, hf-hub:ORG/NAME")
    ap.add_argument("--model", help="the architecture of an .npz whose file name is not a registered name")
    ap.add_argument("--image_size", type=int, help="with --checkpoint: default the size it was trained at")
    ap.add_argument("--datasets", help="comma-separated, anything config.dataset accepts (default: the run's)")
    ap.add_argument("--train_split", default="train", help="the pool the shots come from (default train)")
    ap.add_argument("--test_split", default="test", help="default test")
    ap.add_argument("--shots", type=_ints, default=(1, 5, 10, 25), help="default 1,5,10,25")
    ap.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="default 0,1,2")
    ap.add_argument("--l2_reg", type=float, default=2.0**10, help="few-shot regulariser (default 2^10)")
    ap.add_argument("--batch", type=int, default=256, help="feature batch (default 256)")
    ap.add_argument("--tfds_data_dir", help="for TFDS dataset names")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = ap.parse_args(argv)
    if bool(args.workdir) == bool(args.checkpoint):
        ap.error("give exactly one of --workdir or --checkpoint")
    if args.checkpoint and not args.datasets:
        ap.error("--checkpoint needs --datasets")

    from vit_jax import errors

    try:
        results = run(args)
    except errors.UserError as e:
        return errors.report(e)
    if args.json:
        keys = ("fewshot", "knn", "linear_probe")
        print(json.dumps({name: {k: r[k] for k in keys} for name, r in results.items()}))
    else:
        print(format_table(results))
    return 0


def _model_and_config(args):
    """(model, params, data config) for --workdir or --checkpoint."""
    from vit_jax import config as config_lib
    from vit_jax import pretrained, runs
    from vit_jax.configs import defaults

    if args.workdir:
        loaded = runs.from_workdir(args.workdir)
        return loaded.model, loaded.params, config_lib.complete(loaded.config)
    p = pretrained.load(args.checkpoint, args.model)
    size = args.image_size or (p.image_size[0] if p.image_size else None)
    if not size:
        raise runs.RunError(f"{args.checkpoint}: the image size cannot be read from it; pass --image_size.")
    if p.image_size and size != p.image_size[0]:
        p = pretrained.for_image_size(p, size)  # resampled as the source's library resamples
    c = defaults.get_config()
    c.pp.crop, c.pp.channels = size, 3
    norm = pretrained.normalisation(p)
    if norm is not None:
        c.pp.mean, c.pp.std = norm
    return p.model(), p.params, c


def run(args) -> dict:
    """{dataset: {'fewshot': {'5': mean, ...}, 'fewshot_std': {...}, 'knn', 'linear_probe'}}."""
    import numpy as np

    from vit_jax import data, features, parallel, preprocess

    model, params, config = _model_and_config(args)
    with config.unlocked():
        config.fewshot.train_split, config.fewshot.test_split = args.train_split, args.test_split
        if args.tfds_data_dir:
            config.tfds_data_dir = args.tfds_data_dir
    mesh = parallel.make_mesh(config.mesh)
    sharding = parallel.batch_sharding(mesh)
    step = features.make_feature_step(model, preprocess.pp_dict(config), sharding)
    names = args.datasets.split(",") if args.datasets else [config.dataset]
    results = {}
    for name in names:
        c = features.dataset_config(config, name)
        train_source, test_source = data.get_source(c, "train"), data.get_source(c, "test")
        train = features.extract(step, params, train_source, args.batch, sharding)
        test = features.extract(step, params, test_source, args.batch, sharding)
        r = features.evaluate(
            train, test, train_source.num_classes, shots=args.shots, seeds=args.seeds, l2_reg=args.l2_reg
        )
        results[name] = {
            "fewshot": {str(k): float(np.mean(v)) for k, v in r["fewshot"].items()},
            "fewshot_std": {str(k): float(np.std(v)) for k, v in r["fewshot"].items()},
            "knn": r["knn"],
            "linear_probe": r["linear_probe"],
            "examples": {"train": len(train[1]), "test": len(test[1])},
        }
    return results


def format_table(results: dict) -> str:
    lines = []
    for name, r in results.items():
        n = r["examples"]
        lines.append(f"{name} ({n['train']} train / {n['test']} test examples)")
        for k, mean in r["fewshot"].items():
            lines.append(f"  {k:>3}-shot linear  {100 * mean:6.2f} ± {100 * r['fewshot_std'][k]:.2f} %")
        lines.append(f"  kNN (k=20)      {100 * r['knn']:6.2f} %")
        lines.append(f"  linear probe    {100 * r['linear_probe']:6.2f} %")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
