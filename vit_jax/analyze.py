"""Run the paper's analyses on a trained model and write `analysis/`.

    python -m vit_jax.analyze --workdir runs/quickstart [--num_images 256]
    python -m vit_jax.analyze --checkpoint ViT-B_16.npz --model ViT-B_16 --images DIR [--image_size 224]
    python -m vit_jax.analyze --checkpoint hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k --images DIR

Writes mean_attention_distance.png, attention_maps.png, posemb_similarity.png,
embedding_filters.png and analysis.json into WORKDIR/analysis (or --outdir).
With --workdir the images are the run's test images, preprocessed as its evaluation.
"""

import argparse
import json
import os
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="a training run's workdir")
    ap.add_argument(
        "--checkpoint", help="published weights (with --images): .npz, a timm/transformers directory, hf-hub:ORG/NAME"
    )
    ap.add_argument(
        "--model", help="the architecture of an .npz whose file name is not a registered name, e.g. ViT-B_16"
    )
    ap.add_argument("--images", help="a directory of images for --checkpoint")
    ap.add_argument("--image_size", type=int, help="default: the size the checkpoint was trained at")
    ap.add_argument("--num_images", type=int, default=256, help="images averaged over (default 256)")
    ap.add_argument("--outdir", help="default: WORKDIR/analysis, or ./analysis with --checkpoint")
    args = ap.parse_args(argv)
    if bool(args.workdir) == bool(args.checkpoint):
        ap.error("give exactly one of --workdir or --checkpoint")
    if args.checkpoint and not args.images:
        ap.error("--checkpoint needs --images")

    from vit_jax import analysis, data, errors, preprocess, runs

    try:
        if args.workdir:
            loaded = runs.from_workdir(args.workdir)
            source = data.get_source(loaded.config, "test")
            images = np.asarray(preprocess.preprocess_eval(source.first_images(args.num_images), loaded.pp))
            outdir = args.outdir or os.path.join(args.workdir, "analysis")
        else:
            loaded = runs.from_checkpoint(args.checkpoint, args.model, args.image_size, need_head=False)
            files = runs.image_files(args.images)[: args.num_images]
            images, _, failures = runs.load_images(files, loaded)
            for e in failures:
                print(f"warning: {e}", file=sys.stderr)
            if len(images) == 0:
                raise runs.RunError(f"None of the images under {args.images} could be read.")
            outdir = args.outdir or "analysis"
    except errors.UserError as e:
        return errors.report(e)
    result = analysis.analyze(loaded.model, loaded.params, images, outdir)
    per_layer = result["mean_attention_distance_per_layer"]
    print(f"Analysed {result['num_images']} images from {loaded.source}; wrote {outdir}/")
    for layer, (lo, hi) in enumerate(zip(per_layer["min_head"], per_layer["max_head"], strict=True)):
        print(f"block {layer}: mean attention distance {lo:.1f} to {hi:.1f} px (lowest / highest head)")
    print(json.dumps({"outdir": outdir, "grid_shape": result["grid_shape"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
