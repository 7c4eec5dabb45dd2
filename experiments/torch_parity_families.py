"""Parity of the later ViT families with the real timm and transformers (run by torch_parity).

timm cases: `timm.create_model(name, **model_args)` with every weight drawn, written as a timm
Hub folder (config.json with `architecture`, `model_args`, `pretrained_cfg`), loaded with
`pretrained.load`; our logits (or features) and pre-logits against timm's `forward` and
`forward_head(pre_logits=True)`; then `pretrained.export(..., 'timm')` built by
`timm.create_model('local-dir:...')` and loaded with `load_state_dict(strict=True)`.
transformers cases: the class's own `save_pretrained` folder, our pre-logits against
`pooler_output`, our tokens against `last_hidden_state` (CLIP's is the last block's output,
un-normalised) and DeiT's logits; then `export(..., 'hf')` read back by the same class, which
must report no missing and no unexpected weights.
"""

import json
import os

import jax
import numpy as np

from vit_jax import pretrained

# (architecture, model_args): full size where the model is small, fewer blocks elsewhere.
TIMM_FAMILY_CASES = [
    ("vit_small_patch14_dinov2", {"depth": 2}),
    ("vit_small_patch14_reg4_dinov2", {"depth": 2}),
    ("vit_giant_patch14_dinov2", {"depth": 1, "embed_dim": 384, "num_heads": 6, "img_size": 224}),
    ("vit_base_patch32_clip_224", {"depth": 2}),
    ("vit_base_patch16_clip_quickgelu_224", {"depth": 2}),
    ("vit_base_patch16_siglip_224", {"depth": 2}),
    ("vit_base_patch16_siglip_gap_224", {"depth": 2}),
    ("vit_base_patch32_siglip_256", {"depth": 2}),
    ("vit_so400m_patch14_siglip_384", {"depth": 1}),  # 27x27 patches of 14 px: 6 pixels left out
    ("deit_tiny_distilled_patch16_224", {}),
    ("deit3_small_patch16_224", {}),
    ("vit_medium_patch16_reg4_gap_256", {"depth": 2}),
    ("vit_betwixt_patch16_reg1_gap_256", {"depth": 2}),
    ("eva02_tiny_patch14_224", {}),
    ("eva02_small_patch14_336", {"depth": 2}),
    ("eva02_base_patch14_224", {"depth": 2}),
]


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def ours_out(p, x):
    model = p.model()
    f = jax.jit(lambda x: model.apply({"params": p.params}, x, train=False, return_intermediates=True))
    logits, out = f(x)
    return np.asarray(logits), jax.tree.map(np.asarray, out)


def _timm_dir(m, arch: str, args: dict, d: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(d)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "model.safetensors"))
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.pretrained_cfg.items()}
    meta = {"architecture": arch, "num_classes": m.num_classes, "model_args": args, "pretrained_cfg": cfg}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(meta, f)


def timm_family_case(case, images, workdir, rel_err, randomize) -> dict:
    import timm
    import torch

    arch, args = case
    num_classes = 0 if "dinov2" in arch or "clip" in arch or "siglip" in arch else 10
    m = timm.create_model(arch, pretrained=False, num_classes=num_classes, **args).eval()
    randomize(m, 0)
    x = images(m.pretrained_cfg["input_size"][1] if "img_size" not in args else args["img_size"])
    with torch.no_grad():
        feats = m.forward_features(_nchw(x))
        theirs, pre = m.forward_head(feats).numpy(), m.forward_head(feats, pre_logits=True).numpy()
    d = os.path.join(workdir, arch)
    _timm_dir(m, arch, args, d)
    p = pretrained.load(d)
    logits, out = ours_out(p, x)
    row = {"case": f"timm {arch} {args or ''}".strip(), "load_rel_err": rel_err(logits, theirs)}
    row["pre_logits_rel_err"] = rel_err(out["pre_logits"], pre)
    exported = os.path.join(workdir, arch + "_export")
    pretrained.export(p.params, p.model_config, exported, "timm", data_config=p.data_config)
    meta = json.load(open(os.path.join(exported, "config.json")))
    back = timm.create_model(f"local-dir:{exported}", pretrained=False, **meta.get("model_args", {})).eval()
    from safetensors.torch import load_file

    back.load_state_dict(load_file(os.path.join(exported, "model.safetensors")), strict=True)
    with torch.no_grad():
        again = back(_nchw(x)).numpy()
    row.update(export_rel_err=rel_err(again, theirs), exported_as=meta["architecture"])
    return row


def timm_resample_case(images, workdir, rel_err, randomize) -> dict:
    """DINOv2 at 518 px loaded for 224 px: ours against timm's own load-time resampling."""
    import timm
    import torch
    from timm.models.vision_transformer import checkpoint_filter_fn

    arch, args = "vit_small_patch14_dinov2", {"depth": 2}
    m = timm.create_model(arch, pretrained=False, num_classes=0, **args).eval()
    randomize(m, 2)
    d = os.path.join(workdir, arch + "_518")
    _timm_dir(m, arch, args, d)
    small = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224, **args).eval()
    small.load_state_dict(checkpoint_filter_fn(m.state_dict(), small), strict=True)
    x = images(224)
    with torch.no_grad():
        theirs = small(_nchw(x)).numpy()
    p = pretrained.load(d, image_size=224)
    return {
        "case": f"timm {arch} 518 -> 224 px (bicubic, antialiased)",
        "load_rel_err": rel_err(ours_out(p, x)[0], theirs),
    }


def _hf_models():
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        DeiTConfig,
        DeiTForImageClassificationWithTeacher,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    small = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3)
    return [
        ("Dinov2Model", Dinov2Model, Dinov2Config(**small, image_size=518, patch_size=14), (518, 224)),
        ("Dinov2Model SwiGLU", Dinov2Model, Dinov2Config(**small, use_swiglu_ffn=True, patch_size=14), (224,)),
        (
            "Dinov2WithRegistersModel",
            Dinov2WithRegistersModel,
            Dinov2WithRegistersConfig(**small, image_size=518, patch_size=14),
            (518, 224),
        ),
        ("CLIPVisionModel", CLIPVisionModel, CLIPVisionConfig(**small, intermediate_size=384, patch_size=32), (224,)),
        ("SiglipVisionModel", SiglipVisionModel, SiglipVisionConfig(**small, intermediate_size=384), (224,)),
        (
            "SiglipVisionModel 14 px patches at 384 px",
            SiglipVisionModel,
            SiglipVisionConfig(**small, intermediate_size=384, patch_size=14, image_size=384),
            (384,),
        ),
        (
            "DeiTForImageClassificationWithTeacher",
            DeiTForImageClassificationWithTeacher,
            DeiTConfig(**small, intermediate_size=384, num_labels=10),
            (224,),
        ),
    ]


def _hf_outputs(m, x, name: str):
    import torch

    with torch.no_grad():
        if name.startswith("DeiT"):
            return m(pixel_values=_nchw(x)).logits.numpy(), None, None
        out = (
            m(pixel_values=_nchw(x), interpolate_pos_encoding=True)
            if "Dinov2" not in name
            else m(pixel_values=_nchw(x))
        )
        return None, out.pooler_output.numpy(), out.last_hidden_state.numpy()


def hf_family_case(spec, images, workdir, rel_err, randomize) -> list[dict]:
    name, cls, config, sizes = spec
    m = cls(config).eval()
    randomize(m, 3)
    d = os.path.join(workdir, "hf_" + name.replace(" ", "_"))
    m.save_pretrained(d)
    rows = []
    for size in sizes:
        x = images(size)
        logits, pooled, hidden = _hf_outputs(m, x, name)
        p = pretrained.load(d, image_size=size if size != config.image_size else None)
        ours, out = ours_out(p, x)
        row = {"case": f"transformers {name} at {size} px"}
        if logits is not None:
            row["load_rel_err"] = rel_err(ours, logits)
        else:
            row["pooler_rel_err"] = rel_err(out["pre_logits"], pooled)
            tokens = out["tokens"][-1] if name.startswith("CLIP") else out["encoded"]
            row["last_hidden_state_rel_err"] = rel_err(tokens, hidden)
        rows.append(row)
    exported = d + "_export"
    q = pretrained.load(d)
    pretrained.export(q.params, q.model_config, exported, "hf", extra=q.extra, data_config=q.data_config)
    back, info = cls.from_pretrained(exported, output_loading_info=True)
    x = images(config.image_size)
    again = _hf_outputs(back.eval(), x, name)
    first = _hf_outputs(m, x, name)
    i = 0 if name.startswith("DeiT") else 1
    rows[-1].update(
        export_rel_err=rel_err(again[i], first[i]),
        missing=list(info["missing_keys"]),
        unexpected=list(info["unexpected_keys"]),
    )
    return rows


def hf_full_model_cases(images, workdir, rel_err, randomize) -> list[dict]:
    """A full CLIPModel and SiglipModel (model types `clip`, `siglip`): the vision tower is read,
    the text tower kept apart; the export is the tower alone, for CLIPVisionModel/SiglipVisionModel."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, SiglipConfig, SiglipModel, SiglipVisionModel

    small = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384)
    text = dict(small, vocab_size=100)
    rows = []
    for name, cls, config, tower_cls in (
        (
            "CLIPModel",
            CLIPModel,
            CLIPConfig(text_config=text, vision_config=dict(small, patch_size=32)),
            CLIPVisionModel,
        ),
        ("SiglipModel", SiglipModel, SiglipConfig(text_config=text, vision_config=small), SiglipVisionModel),
    ):
        m = cls(config).eval()
        randomize(m, 4)
        d = os.path.join(workdir, "hf_full_" + name)
        m.save_pretrained(d)
        x = images(224)
        with torch.no_grad():
            pooled = m.vision_model(pixel_values=_nchw(x)).pooler_output.numpy()
        p = pretrained.load(d)
        row = {
            "case": f"transformers {name} (vision tower)",
            "pooler_rel_err": rel_err(ours_out(p, x)[1]["pre_logits"], pooled),
        }
        row["kept_apart"] = len(p.extra or {})
        exported = d + "_export"
        pretrained.export(p.params, p.model_config, exported, "hf", extra=p.extra, data_config=p.data_config)
        back, info = tower_cls.from_pretrained(exported, output_loading_info=True)
        with torch.no_grad():
            again = back.eval()(pixel_values=_nchw(x)).pooler_output.numpy()
        row.update(
            export_rel_err=rel_err(again, pooled),
            missing=list(info["missing_keys"]),
            unexpected=list(info["unexpected_keys"]),
        )
        rows.append(row)
    return rows
