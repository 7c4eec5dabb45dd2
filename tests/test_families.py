"""The later ViT families' pieces as VisionTransformer fields (LayerScale, registers, distillation,
no class token, no_embed_class, pre-norm, activations, QK-norm, SwiGLU, EVA-02's rotary embedding),
each family's combination checked against the independent float64 NumPy forward pass, with every
tensor drawn at random (a zero LayerScale or token would hide a wrong mapping)."""

import jax
import numpy as np
import pytest
from conftest import perturb, rel_err
from reference_numpy import family_forward

from vit_jax import checkpoint, models

BASE = dict(
    patches={"size": (4, 4)},
    hidden_size=32,
    transformer=dict(mlp_dim=48, num_heads=4, num_layers=2, dropout_rate=0.0, attention_dropout_rate=0.0),
    classifier="token",
    representation_size=None,
)
FAMILIES = {
    "dinov2": dict(layerscale_init=1e-5, activation="gelu"),
    "dinov2_registers": dict(layerscale_init=1e-5, activation="gelu", reg_tokens=4),
    "dinov2_giant": dict(layerscale_init=1e-5, activation="gelu", mlp_type="swiglu"),
    "clip": dict(pre_norm=True, patch_bias=False, activation="quick_gelu", layernorm_epsilon=1e-5),
    "siglip": dict(class_token=False, classifier="map", activation="gelu_tanh"),
    "deit_distilled": dict(distilled=True, activation="gelu"),
    "deit3": dict(layerscale_init=1e-6, posemb_prefix=False, activation="gelu"),
    "reg_gap": dict(
        class_token=False, reg_tokens=4, posemb_prefix=False, classifier="gap", fc_norm=True, layerscale_init=1e-5
    ),
    "eva02": dict(
        classifier="gap", class_token=True, fc_norm=True, rope=True, rope_ref_grid=(16, 16), mlp_type="swiglu_norm"
    ),
    "qk_norm": dict(qk_norm=True, activation="gelu"),
}


def family(name, **extra):
    config = {**BASE, **FAMILIES[name], **extra}
    config["transformer"] = dict(BASE["transformer"])
    return config


def drawn(config, images, seed=0):
    model = models.VisionTransformer(num_classes=5, **config)
    params = model.init(jax.random.PRNGKey(seed), images, train=False)["params"]
    return model, perturb(params, seed=seed, scale=0.2)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_matches_the_numpy_forward(name, images):
    config = family(name)
    model, params = drawn(config, images[..., :3])
    logits, out = model.apply({"params": params}, images, train=False, return_intermediates=True)
    ref_logits, ref_pre_logits = family_forward(
        jax.tree.map(lambda a: np.asarray(a, np.float64), params), images, config
    )
    assert rel_err(logits, ref_logits) < 1e-5
    assert rel_err(out["pre_logits"], ref_pre_logits) < 1e-5
    prefix = int(config.get("class_token", config["classifier"] == "token")) + config.get("distilled", 0)
    assert out["num_prefix_tokens"] == prefix + config.get("reg_tokens", 0)
    assert out["tokens"].shape[2] == out["num_prefix_tokens"] + 16


def test_the_new_parameters_have_their_names(images):
    names = {}
    for name in FAMILIES:
        model, params = drawn(family(name), images)
        names[name] = set(checkpoint.flatten(params))
    block = "Transformer/encoderblock_0/"
    assert {block + "LayerScale_0/scale", block + "LayerScale_1/scale"} <= names["dinov2"]
    assert {"reg", "cls"} <= names["dinov2_registers"]
    assert names["dinov2_registers"] - names["dinov2"] == {"reg"}
    assert {"dist", "head_dist/kernel", "head_dist/bias"} <= names["deit_distilled"]
    assert "Transformer/pre_norm/scale" in names["clip"] and "embedding/bias" not in names["clip"]
    assert "cls" not in names["siglip"] and "MAPHead/probe" in names["siglip"]
    attention = block + "MultiHeadDotProductAttention_0/"
    assert {attention + "query_norm/scale", attention + "key_norm/bias"} <= names["qk_norm"]
    assert block + "MlpBlock_0/LayerNorm_0/scale" in names["eva02"]
    model, params = drawn(family("dinov2_giant"), images)
    assert params["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (32, 96)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)  # cls row, no register rows
    model, params = drawn(family("reg_gap"), images)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 16, 32)  # no_embed_class


def test_the_fields_change_only_what_they_name(images):
    """LayerScale at 1 is the block without it; a register's value changes the output."""
    model, params = drawn(family("dinov2"), images)
    ones = jax.tree_util.tree_map_with_path(
        lambda path, a: np.ones_like(a) if "LayerScale" in jax.tree_util.keystr(path) else a, params
    )
    plain = models.VisionTransformer(num_classes=5, **{**family("dinov2"), "layerscale_init": None})
    without = {k: v for k, v in ones.items()}
    without["Transformer"] = {
        k: ({n: m for n, m in v.items() if not n.startswith("LayerScale")} if k.startswith("encoderblock") else v)
        for k, v in ones["Transformer"].items()
    }
    np.testing.assert_allclose(
        model.apply({"params": ones}, images), plain.apply({"params": without}, images), atol=1e-6
    )
    model, params = drawn(family("dinov2_registers"), images)
    moved = dict(params, reg=params["reg"] + np.random.default_rng(1).normal(size=params["reg"].shape))
    assert rel_err(model.apply({"params": moved}, images), model.apply({"params": params}, images)) > 1e-3


def test_scan_runs_the_new_blocks_as_unrolled(images):
    config = family("eva02", layerscale_init=0.5, qk_norm=True)
    model, params = drawn(config, images)
    scanned = models.VisionTransformer(num_classes=5, scan=True, **config)
    got = scanned.apply({"params": checkpoint.stack_blocks(params)}, images, train=False)
    np.testing.assert_allclose(got, model.apply({"params": params}, images, train=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(class_token=False), "class_token=False with classifier='token'"),
        (dict(distilled=True, classifier="gap"), "distilled=True"),
        (dict(activation="relu"), "activation='relu'"),
        (dict(mlp_type="geglu"), "mlp_type='geglu'"),
        (dict(reg_tokens=-1), "reg_tokens=-1"),
        (dict(rope=True, hidden_size=24, transformer=dict(BASE["transformer"], num_heads=4)), "divisible by 4"),
    ],
)
def test_bad_family_fields_are_one_line(fields, message, images):
    model = models.VisionTransformer(num_classes=5, **{**BASE, **fields})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model.init(jax.random.PRNGKey(0), images, train=False)
