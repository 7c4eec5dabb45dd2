"""Parity with the real timm and transformers libraries (needs torch, timm, transformers).

    pip install torch timm transformers   # beside requirements.txt; not needed by the suite
    python -m experiments.torch_parity [--out experiments/results/torch_parity.json]

Each case builds a model in timm or transformers with random weights, writes it as the Hub
stores it (config.json + model.safetensors), loads it with `pretrained.load` and compares our
logits with the torch model's on the same images; then exports our parameters with
`pretrained.export` and loads them back into the library (timm: `load_state_dict(strict=True)`;
transformers: `from_pretrained`, which must report no missing or unexpected weights) and
compares again. Relative error: ||ours - theirs|| / ||theirs|| over the logits.
"""

import argparse
import json
import os
import tempfile

import jax
import numpy as np

from vit_jax import pretrained

TIMM_CASES = [
    "vit_tiny_patch16_224",
    "vit_small_patch32_384",
    "vit_base_patch16_gap_224",
    "vit_tiny_r_s16_p8_224",
    "vit_small_r26_s32_224",
]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def randomize(module, seed: int) -> None:
    """Every parameter drawn afresh (zero heads and unit norms would hide mapping mistakes)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.02 if p.ndim > 1 else 0.1
            base = 1.0 if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))


def ours(p: pretrained.Pretrained, images_nhwc) -> np.ndarray:
    model = p.model()
    return np.asarray(jax.jit(lambda x: model.apply({"params": p.params}, x, train=False))(images_nhwc))


def timm_case(arch: str, images, workdir: str) -> dict:
    import timm
    import torch
    from safetensors.torch import save_file

    m = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    randomize(m, 0)
    size = m.pretrained_cfg["input_size"][1]
    x = images(size)
    with torch.no_grad():
        theirs = m(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    d = os.path.join(workdir, arch)
    os.makedirs(d)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architecture": arch, "num_classes": 10}, f)
    p = pretrained.load(d)
    load_err = rel_err(ours(p, x), theirs)
    out = os.path.join(workdir, arch + "_export")
    pretrained.export(p.params, p.model_config, out, "timm")
    meta = json.load(open(os.path.join(out, "config.json")))
    back = timm.create_model(meta["architecture"], num_classes=meta["num_classes"], **meta.get("model_args", {}))
    back.eval()
    from safetensors.torch import load_file

    back.load_state_dict(load_file(os.path.join(out, "model.safetensors")), strict=True)
    with torch.no_grad():
        again = back(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    return {
        "case": f"timm {arch}",
        "load_rel_err": load_err,
        "export_rel_err": rel_err(again, theirs),
        "exported_as": meta["architecture"],
    }


def hf_case(with_head: bool, images, workdir: str) -> dict:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    cfg = ViTConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=224,
        patch_size=16,
        num_labels=10,
    )
    m = (ViTForImageClassification(cfg) if with_head else ViTModel(cfg)).eval()
    randomize(m, 1)
    x = images(224)
    with torch.no_grad():
        out = m(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)))
        theirs = (out.logits if with_head else out.pooler_output).numpy()
    d = os.path.join(workdir, f"hf_{with_head}")
    m.save_pretrained(d)
    p = pretrained.load(d)
    load_err = rel_err(ours(p, x), theirs)
    exported = os.path.join(workdir, f"hf_{with_head}_export")
    pretrained.export(p.params, p.model_config, exported, "hf")
    cls = ViTForImageClassification if with_head else ViTModel
    back, info = cls.from_pretrained(exported, output_loading_info=True)
    back.eval()
    with torch.no_grad():
        out = back(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)))
        again = (out.logits if with_head else out.pooler_output).numpy()
    return {
        "case": "transformers " + ("ViTForImageClassification" if with_head else "ViTModel (pooler = pre-logits)"),
        "load_rel_err": load_err,
        "export_rel_err": rel_err(again, theirs),
        "missing": list(info["missing_keys"]),
        "unexpected": list(info["unexpected_keys"]),
    }


def ours_case(fmt: str, images, workdir: str) -> dict:
    """A model of ours with the original's numerics (tanh GELU), 1-channel 28 px input: exported,
    then run by the library from the exported config alone."""
    import torch
    from safetensors.torch import load_file

    from vit_jax import models

    config = {
        "patches": {"size": (4, 4)},
        "hidden_size": 64,
        "transformer": {"mlp_dim": 128, "num_heads": 4, "num_layers": 3},
        "classifier": "token",
        "representation_size": None,
    }
    x = images(28)[..., :1]
    model = models.VisionTransformer(num_classes=10, **config)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree.map(lambda a: a + 0.05 * np.random.default_rng(a.size).normal(size=a.shape), params)
    mine = ours(pretrained.Pretrained(params, config, 10, "ours"), x)
    out = pretrained.export(params, config, os.path.join(workdir, f"ours_{fmt}"), fmt)
    meta = json.load(open(os.path.join(out, "config.json")))
    pixels = torch.from_numpy(x.transpose(0, 3, 1, 2))
    row = {"case": f"ours (original numerics) -> {fmt}"}
    if fmt == "timm":
        import timm

        back = timm.create_model(meta["architecture"], num_classes=10, **meta.get("model_args", {})).eval()
        back.load_state_dict(load_file(os.path.join(out, "model.safetensors")), strict=True)
        with torch.no_grad():
            theirs = back(pixels).numpy()
    else:
        from transformers import ViTForImageClassification

        back, info = ViTForImageClassification.from_pretrained(out, output_loading_info=True)
        with torch.no_grad():
            theirs = back.eval()(pixel_values=pixels).logits.numpy()
        row.update(missing=list(info["missing_keys"]), unexpected=list(info["unexpected_keys"]))
    return dict(row, export_rel_err=rel_err(theirs, mine))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="experiments/results/torch_parity.json")
    args = ap.parse_args()
    import timm
    import torch
    import transformers

    rng = np.random.default_rng(0)
    images = lambda size: rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)  # noqa: E731
    from experiments import torch_parity_families as fam

    with tempfile.TemporaryDirectory() as workdir:
        rows = []
        cases = [*[(timm_case, a) for a in TIMM_CASES], (hf_case, True), (hf_case, False)]
        for case in [*cases, (ours_case, "timm"), (ours_case, "hf")]:
            rows.append(case[0](case[1], images, workdir))
            print(json.dumps(rows[-1]), flush=True)
        family_rows = []
        for case in fam.TIMM_FAMILY_CASES:
            family_rows.append(fam.timm_family_case(case, images, workdir, rel_err, randomize))
            print(json.dumps(family_rows[-1]), flush=True)
        family_rows.append(fam.timm_resample_case(images, workdir, rel_err, randomize))
        print(json.dumps(family_rows[-1]), flush=True)
        for spec in fam._hf_models():
            for row in fam.hf_family_case(spec, images, workdir, rel_err, randomize):
                family_rows.append(row)
                print(json.dumps(row), flush=True)
        for row in fam.hf_full_model_cases(images, workdir, rel_err, randomize):
            family_rows.append(row)
            print(json.dumps(row), flush=True)
    versions = {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__}
    with open(args.out, "w") as f:
        json.dump({"versions": versions, "cases": rows, "families": family_rows}, f, indent=1)


if __name__ == "__main__":
    main()
