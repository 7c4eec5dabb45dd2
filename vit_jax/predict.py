"""Top-k predictions for image files, with the evaluation preprocessing of the run.

    python -m vit_jax.predict --workdir runs/quickstart IMAGE [IMAGE ...] [--json]
    python -m vit_jax.predict --checkpoint FILE.npz --model ViT-B_16 [--labels names.txt] IMAGE ...
    python -m vit_jax.predict --checkpoint hf-hub:google/vit-base-patch16-224 IMAGE ...

An image that cannot be read is reported (one line naming the file) and the others
are still predicted; the exit status is then 1.
"""

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--workdir", help="a training run's workdir")
    ap.add_argument("--checkpoint", help="published weights: .npz, a timm/transformers directory, hf-hub:ORG/NAME")
    ap.add_argument("--model", help="the architecture of an .npz whose file name is not a registered name")
    ap.add_argument("--image_size", type=int, help="default: the size the checkpoint was trained at")
    ap.add_argument("--labels", help="class names, one per line, for --checkpoint")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object per image")
    args = ap.parse_args(argv)
    if bool(args.workdir) == bool(args.checkpoint):
        ap.error("give exactly one of --workdir or --checkpoint")

    import jax

    from vit_jax import errors, runs

    try:
        if args.workdir:
            loaded = runs.from_workdir(args.workdir)
        else:
            loaded = runs.from_checkpoint(args.checkpoint, args.model, args.image_size, args.labels)
    except errors.UserError as e:
        return errors.report(e)
    images, paths, failures = runs.load_images(args.images, loaded)
    for e in failures:
        print(f"error: {e}", file=sys.stderr)
    if paths:
        logits = loaded.model.apply({"params": loaded.params}, images, train=False)
        probs = np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))
        k = min(args.top, probs.shape[-1])
        for path, p in zip(paths, probs, strict=True):
            top = np.argsort(-p)[:k]
            preds = [{"class": int(c), "name": loaded.class_names[c], "probability": float(p[c])} for c in top]
            if args.json:
                print(json.dumps({"image": path, "top": preds}))
            else:
                print(path)
                for r in preds:
                    print(f"  {r['probability']:7.2%}  {r['name']} ({r['class']})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
