"""Export a trained run's model for another codebase.

    python -m vit_jax.export --workdir runs/quickstart --format timm --out exported/quickstart
    python -m vit_jax.export --workdir W --format hf|npz --out PATH

`timm` writes a directory that `timm.create_model(architecture, num_classes=N, **model_args)`
(both from its config.json) loads with `load_state_dict(..., strict=True)`; `hf` one that
transformers' `ViTForImageClassification.from_pretrained` loads; `npz` the original release's
file. The run's class names go with the weights.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a training run's workdir")
    ap.add_argument("--format", required=True, choices=["timm", "hf", "npz"])
    ap.add_argument("--out", required=True, help="the directory (timm, hf) or file (npz) to write")
    args = ap.parse_args(argv)

    from vit_jax import errors, pretrained, runs

    try:
        loaded = runs.from_workdir(args.workdir)
        model_config = {k: getattr(loaded.model, k) for k in pretrained.EXPORTED_FIELDS}
        path = pretrained.export(
            loaded.params, model_config, args.out, args.format, loaded.class_names, data_config=_data_config(loaded)
        )
    except errors.UserError as e:
        return errors.report(e)
    print(json.dumps({"workdir": args.workdir, "format": args.format, "out": path, "source": loaded.source}))
    return 0


def _data_config(loaded) -> dict | None:
    """The run's evaluation preprocessing, for the export's pretrained_cfg / preprocessor_config.json."""
    from vit_jax.weights import families

    pp = loaded.config.pp if loaded.config is not None else None
    if pp is None:
        return None
    mean, std = (pp.get("mean"), pp.get("std")) if pp.get("mean") is not None else families.INCEPTION
    crop = pp.crop if isinstance(pp.crop, int) else pp.crop[0]
    return families.data_config(mean, std, crop, float(pp.get("eval_crop_pct") or 1.0), "bilinear")


if __name__ == "__main__":
    sys.exit(main())
