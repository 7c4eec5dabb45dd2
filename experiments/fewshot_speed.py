"""Speed of the evaluation protocol on this machine: features of 10,000 Fashion-MNIST images with
the Fashion-MNIST model (`configs/fashion_mnist.py`), then few-shot linear (1/5/10/25 shots x 3
seeds), kNN and the linear probe on them.

    python -m experiments.fewshot_speed --dataset ../shared/data/fashion-mnist [--workdir RUN]

The few-shot pool and kNN memory are the first 10,000 training images, the test set the 10,000
test images. Without --workdir the parameters are random (speed does not depend on them). Prints
one JSON line; BENCHMARKS.md records it.
"""

import argparse
import json
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="the Fashion-MNIST IDX directory")
    ap.add_argument("--workdir", help="a trained run of configs/fashion_mnist.py (default: random parameters)")
    ap.add_argument("--examples", type=int, default=10_000)
    args = ap.parse_args(argv)

    import jax

    from vit_jax import config as config_lib
    from vit_jax import data, features, models, parallel, preprocess, runs

    if args.workdir:
        loaded = runs.from_workdir(args.workdir)
        model, params = loaded.model, loaded.params
    config = config_lib.complete(config_lib.load_file("configs/fashion_mnist.py"))
    config.dataset = args.dataset
    if not args.workdir:
        model = models.VisionTransformer(num_classes=10, **config_lib.model_kwargs(config))
        shape = (1, *preprocess.pp_dict(config)["crop"], config.pp.channels)
        params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros(shape), train=False))()["params"]
    config.train_split, config.test_split = f"train[:{args.examples}]", f"test[:{args.examples}]"
    sharding = parallel.batch_sharding(parallel.make_mesh(config.mesh))
    step = features.make_feature_step(model, preprocess.pp_dict(config), sharding)
    train_source, test_source = data.get_source(config, "train"), data.get_source(config, "test")

    t0 = time.perf_counter()
    test = features.extract(step, params, test_source, 500, sharding)
    t_features = time.perf_counter() - t0  # includes the one compile
    train = features.extract(step, params, train_source, 500, sharding)
    t0 = time.perf_counter()
    result = features.evaluate(train, test, 10)
    t_eval = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "features_seconds_10k_test_images": round(t_features, 2),
                "evaluators_seconds": round(t_eval, 2),
                "examples": {"pool": len(train[1]), "test": len(test[1])},
                "feature_dim": int(test[0].shape[1]),
                "params": "trained" if args.workdir else "random",
                "devices": jax.device_count(),
                "result": {
                    "fewshot": {k: sum(v) / len(v) for k, v in result["fewshot"].items()},
                    "knn": result["knn"],
                    "linear_probe": result["linear_probe"],
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
