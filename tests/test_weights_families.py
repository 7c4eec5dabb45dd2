"""The later ViT families read from and written to timm's and transformers' layouts.

The files are drawn here by the libraries' names and shapes (reference_timm.py), every tensor
at random; the outputs are checked against the NumPy forward pass written from timm's names,
and the transformers files are the same weights renamed by a mapping written in this file.
"""

import json
import os

import numpy as np
import pytest
from conftest import rel_err
from reference_timm import timm_forward, timm_state
from safetensors.numpy import load_file, save_file

from vit_jax import pretrained
from vit_jax.weights import resample

TIMM_CASES = {
    "vit_small_patch14_dinov2": dict(ls=True, num_classes=0),
    "vit_small_patch14_reg4_dinov2": dict(ls=True, reg=4, no_embed_class=True, num_classes=0),
    "vit_giant_patch14_dinov2": dict(ls=True, mlp_kind="packed", num_classes=0),
    "vit_base_patch16_clip_quickgelu_224": dict(pre_norm=True, act="quick_gelu", eps=1e-5, num_classes=0),
    "vit_base_patch32_siglip_256": dict(cls=False, pool="map", act="gelu_tanh", num_classes=0),
    "vit_base_patch16_siglip_gap_224": dict(cls=False, pool="avg", num_classes=0),
    "deit_tiny_distilled_patch16_224": dict(dist=True),
    "deit3_small_patch16_224": dict(ls=True, no_embed_class=True),
    "vit_medium_patch16_reg4_gap_256": dict(cls=False, reg=4, no_embed_class=True, pool="avg", fc_norm=True, ls=True),
    "eva02_tiny_patch14_224": dict(attn="eva_fused", mlp_kind="packed", pool="avg", fc_norm=True, rope=True),
    "eva02_base_patch14_224": dict(attn="eva_split", mlp_kind="split_norm", pool="avg", fc_norm=True, rope=True),
}
SHAPE_ARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4}


def write_dir(path, state: dict, config: dict) -> str:
    os.makedirs(path, exist_ok=True)
    save_file(state, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


def run(p, images):
    logits, out = p.model().apply({"params": p.params}, images, train=False, return_intermediates=True)
    return np.asarray(logits), out


@pytest.mark.parametrize("arch", TIMM_CASES)
def test_timm_families_compute_what_timm_computes_and_write_back_bitwise(arch, tmp_path, images):
    spec = TIMM_CASES[arch]
    state = timm_state(np.random.default_rng(0), **spec)
    config = {"architecture": arch, "num_classes": spec.get("num_classes", 5), "model_args": dict(SHAPE_ARGS)}
    p = pretrained.load(write_dir(tmp_path / "in", state, config))
    logits, out = run(p, images)
    expected, pre_logits = timm_forward(state, images, **spec)
    assert rel_err(logits, expected) < 1e-5
    assert rel_err(out["pre_logits"], pre_logits) < 1e-5
    exported = pretrained.export(p.params, p.model_config, str(tmp_path / "out"), "timm", data_config=p.data_config)
    back = load_file(os.path.join(exported, "model.safetensors"))
    assert sorted(back) == sorted(state)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    meta = json.load(open(os.path.join(exported, "config.json")))
    family = arch.split("_patch")[0].split("_")[0]
    assert meta["architecture"].startswith(family if family != "vit" else "vit_")
    assert meta["pretrained_cfg"]["mean"] == list(p.data_config["mean"])


def test_each_family_name_sets_the_numerics_its_weights_do_not_show():
    arch = pretrained.architecture
    assert arch("vit_large_patch14_clip_quickgelu_336")["activation"] == "quick_gelu"
    assert arch("vit_large_patch14_clip_224")["layernorm_epsilon"] == 1e-5
    assert arch("vit_so400m_patch14_siglip_384")["activation"] == "gelu"
    assert arch("vit_so400m_patch16_siglip_256")["activation"] == "gelu_tanh"
    so400m = arch("vit_so400m_patch14_siglip_384")
    assert (so400m["hidden_size"], so400m["transformer"]["mlp_dim"], so400m["transformer"]["num_layers"]) == (
        1152,
        4304,
        27,
    )
    giant = arch("vit_giant_patch14_reg4_dinov2.lvd142m")
    assert (giant["mlp_type"], giant["transformer"]["mlp_dim"], giant["reg_tokens"], giant["posemb_prefix"]) == (
        "swiglu",
        4096,
        4,
        False,
    )
    eva = arch("eva02_large_patch14_448")
    assert (eva["rope_ref_grid"], eva["mlp_type"], eva["transformer"]["mlp_dim"], eva["key_bias"]) == (
        (16, 16),
        "swiglu_norm",
        2730,
        False,
    )
    assert arch("deit3_base_patch16_384")["layerscale_init"] == 1e-6


def test_a_bare_safetensors_with_a_family_name_loads_the_full_size_and_refuses_another(tmp_path):
    import jax

    from vit_jax import models

    config = pretrained.architecture("deit_tiny_distilled_patch16_224")
    model = models.VisionTransformer(num_classes=1000, **config)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32)
    )
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32), shapes["params"])
    path = str(tmp_path / "deit")
    pretrained.export(params, config, path, "timm")
    p = pretrained.load(f"{path}/model.safetensors", model="deit_tiny_distilled_patch16_224")
    assert p.model_config["distilled"] and p.image_size == (224, 224) and p.num_classes == 1000
    with pytest.raises(pretrained.PretrainedError, match="does not fit deit3_small_patch16_224.*dist"):
        pretrained.load(f"{path}/model.safetensors", model="deit3_small_patch16_224")


# ----------------------------------------------------------------------------- transformers


def _vit_layers(state, out, prefix, layers, names):
    d = state["blocks.0.norm1.weight"].shape[0]
    for i in range(layers):
        t, h = f"blocks.{i}.", f"{prefix}{names['layers']}{i}."
        for j, n in enumerate(names["qkv"]):
            out[f"{h}{n}.weight"] = state[t + "attn.qkv.weight"][j * d : (j + 1) * d]
            out[f"{h}{n}.bias"] = state[t + "attn.qkv.bias"][j * d : (j + 1) * d]
        for ours, theirs in names["pairs"]:
            for wb in ("weight", "bias"):
                out[f"{h}{ours}.{wb}"] = state[f"{t}{theirs}.{wb}"]
        for k in (1, 2):
            if f"{t}ls{k}.gamma" in state:
                out[f"{h}layer_scale{k}.lambda1"] = state[f"{t}ls{k}.gamma"]


DINO = dict(
    layers="encoder.layer.",
    qkv=[f"attention.attention.{n}" for n in ("query", "key", "value")],
    pairs=[("attention.output.dense", "attn.proj"), ("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"),
           ("mlp.fc2", "mlp.fc2")],
)  # fmt: skip
DEIT_PAIRS = [("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2")]
DEIT = dict(DINO, pairs=DEIT_PAIRS + [("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")])
CLIP = dict(
    layers="encoder.layers.",
    qkv=[f"self_attn.{n}_proj" for n in "qkv"],
    pairs=[("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
           ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")],
)  # fmt: skip


def hf_state(state: dict, model_type: str, rng) -> dict:
    """timm's tensors under transformers' published names (written from modeling_*.py)."""
    out = {}
    if model_type.startswith("dinov2"):
        if "reg_token" in state:  # transformers' table covers the class token: a zero row keeps timm's sum
            out["embeddings.register_tokens"] = state["reg_token"]
            zero = np.zeros((1, 1, state["pos_embed"].shape[-1]), np.float32)
            out["embeddings.position_embeddings"] = np.concatenate([zero, state["pos_embed"]], 1)
        else:
            out["embeddings.position_embeddings"] = state["pos_embed"]
        out["embeddings.cls_token"] = state["cls_token"]
        out["embeddings.mask_token"] = rng.normal(size=(1, state["cls_token"].shape[-1])).astype(np.float32)
        out["embeddings.patch_embeddings.projection.weight"] = state["patch_embed.proj.weight"]
        out["embeddings.patch_embeddings.projection.bias"] = state["patch_embed.proj.bias"]
        _vit_layers(state, out, "", 2, DINO)
        out["layernorm.weight"], out["layernorm.bias"] = state["norm.weight"], state["norm.bias"]
    elif model_type == "deit":
        for ours, theirs in (
            ("cls_token", "cls_token"),
            ("distillation_token", "dist_token"),
            ("position_embeddings", "pos_embed"),
        ):
            out[f"deit.embeddings.{ours}"] = state[theirs]
        for wb in ("weight", "bias"):
            out[f"deit.embeddings.patch_embeddings.projection.{wb}"] = state[f"patch_embed.proj.{wb}"]
            out[f"deit.layernorm.{wb}"] = state[f"norm.{wb}"]
            out[f"cls_classifier.{wb}"], out[f"distillation_classifier.{wb}"] = (
                state[f"head.{wb}"],
                state[f"head_dist.{wb}"],
            )
        _vit_layers(state, out, "deit.", 2, DEIT)
    else:
        v = "vision_model."
        if "cls_token" in state:
            out[v + "embeddings.class_embedding"] = state["cls_token"].reshape(-1)
            out[v + "pre_layrnorm.weight"], out[v + "pre_layrnorm.bias"] = (
                state["norm_pre.weight"],
                state["norm_pre.bias"],
            )
        else:
            out[v + "embeddings.patch_embedding.bias"] = state["patch_embed.proj.bias"]
        out[v + "embeddings.patch_embedding.weight"] = state["patch_embed.proj.weight"]
        out[v + "embeddings.position_embedding.weight"] = state["pos_embed"][0]
        _vit_layers(state, out, v, 2, CLIP)
        out[v + "post_layernorm.weight"], out[v + "post_layernorm.bias"] = state["norm.weight"], state["norm.bias"]
        if "attn_pool.latent" in state:
            h = v + "head."
            out[h + "probe"] = state["attn_pool.latent"]
            out[h + "attention.in_proj_weight"] = np.concatenate(
                [state["attn_pool.q.weight"], state["attn_pool.kv.weight"]]
            )
            out[h + "attention.in_proj_bias"] = np.concatenate([state["attn_pool.q.bias"], state["attn_pool.kv.bias"]])
            for ours, theirs in (
                ("attention.out_proj", "proj"),
                ("layernorm", "norm"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                out[f"{h}{ours}.weight"], out[f"{h}{ours}.bias"] = (
                    state[f"attn_pool.{theirs}.weight"],
                    state[f"attn_pool.{theirs}.bias"],
                )
    return out


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4)
HF_CASES = {
    "dinov2": (dict(ls=True, num_classes=0, mlp=64), dict(SMALL, model_type="dinov2", mlp_ratio=2)),
    "dinov2_with_registers": (
        dict(ls=True, reg=4, no_embed_class=True, num_classes=0, mlp=64),
        dict(SMALL, model_type="dinov2_with_registers", mlp_ratio=2),
    ),
    "clip": (
        dict(pre_norm=True, act="quick_gelu", eps=1e-5, num_classes=0),
        {"model_type": "clip", "vision_config": dict(SMALL, intermediate_size=48)},
    ),
    "siglip_vision_model": (  # a minimal diff: the activation and epsilon are the class's defaults
        dict(cls=False, pool="map", act="gelu_tanh", num_classes=0),
        dict(SMALL, model_type="siglip_vision_model", intermediate_size=48),
    ),
    "deit": (dict(dist=True), dict(SMALL, model_type="deit", intermediate_size=48, layer_norm_eps=1e-6)),
}


@pytest.mark.parametrize("model_type", HF_CASES)
def test_transformers_families_compute_what_timm_computes_and_write_back_bitwise(model_type, tmp_path, images):
    spec, config = HF_CASES[model_type]
    rng = np.random.default_rng(1)
    state = timm_state(rng, **spec)
    hf = hf_state(state, model_type, rng)
    if model_type == "clip":
        hf["text_model.embeddings.token_embedding.weight"] = rng.normal(size=(10, 32)).astype(np.float32)
        hf["logit_scale"] = np.array(2.6592, np.float32)
    p = pretrained.load(write_dir(tmp_path / "in", hf, config))
    logits, out = run(p, images)
    expected, pre_logits = timm_forward(state, images, **spec)
    assert rel_err(logits, expected) < 1e-5 and rel_err(out["pre_logits"], pre_logits) < 1e-5
    exported = pretrained.export(p.params, p.model_config, str(tmp_path / "out"), "hf", extra=p.extra)
    back = load_file(os.path.join(exported, "model.safetensors"))
    vision = {k: v for k, v in hf.items() if not k.startswith(("text_model.", "logit_scale"))}
    assert sorted(back) == sorted(vision) and all(np.array_equal(back[k], vision[k]) for k in vision)
    if model_type == "clip":
        assert set(p.extra) == {"text_model.embeddings.token_embedding.weight", "logit_scale"}
    meta = json.load(open(os.path.join(exported, "config.json")))
    assert meta["model_type"] == {"clip": "clip_vision_model"}.get(model_type, model_type)


def test_transformers_dinov2_keeps_its_mask_token_and_reads_the_processor(tmp_path):
    spec, config = HF_CASES["dinov2"]
    rng = np.random.default_rng(2)
    hf = hf_state(timm_state(rng, **spec), "dinov2", rng)
    d = write_dir(tmp_path / "in", hf, config)
    p = pretrained.load(d)
    assert np.array_equal(p.extra["embeddings.mask_token"], hf["embeddings.mask_token"])
    assert p.data_config["mean"] == (0.485, 0.456, 0.406) and p.model_config["layernorm_epsilon"] == 1e-6
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump({"size": {"shortest_edge": 20}, "crop_size": {"height": 16, "width": 16}, "image_mean": [0.1] * 3,
                   "image_std": [0.2] * 3}, f)  # fmt: skip
    data = pretrained.load(d).data_config
    assert data["mean"] == (0.1, 0.1, 0.1) and data["input_size"] == (3, 16, 16) and data["crop_pct"] == 0.8


# ----------------------------------------------------------------------------- resolution and bad input


def test_torch_bicubic_matches_pytorch_values():
    """F.interpolate(g, (5, 4), mode='bicubic', align_corners=False) of g = arange(9) ** 1.5 on a
    3x3 grid, as PyTorch 2.14 printed it; and the antialiased (2, 2), which timm uses."""
    g = (np.arange(9, dtype=np.float64) ** 1.5).reshape(3, 3, 1)
    up = resample.resample_grid(g, (5, 4), "torch_bicubic")[..., 0]
    np.testing.assert_allclose(up[0], [-0.558178, -0.156568, 1.030948, 2.148568], atol=1e-5)
    np.testing.assert_allclose(up[:, 2], [1.030948, 3.961087, 9.454081, 16.718767, 21.473085], atol=1e-5)
    down = resample.resample_grid(g, (2, 2), "torch_bicubic")[..., 0]
    np.testing.assert_allclose(down, [[1.080373, 3.890219], [13.416672, 19.56236]], atol=1e-5)
    aa = resample.resample_grid(g.astype(np.float32), (2, 2), "timm")[..., 0]
    np.testing.assert_allclose(aa, [[1.902596, 4.563066], [12.665318, 17.756344]], atol=2e-5)
    assert np.allclose(resample.torch_bicubic_matrix(7, 3).sum(1), 1.0)


def test_image_size_resamples_as_the_source_does_and_keeps_the_prefix(tmp_path):
    spec, config = HF_CASES["dinov2"]
    rng = np.random.default_rng(3)
    hf = hf_state(timm_state(rng, **spec), "dinov2", rng)
    p = pretrained.load(write_dir(tmp_path / "hf", hf, config), image_size=24)
    pe = np.asarray(p.params["Transformer"]["posembed_input"]["pos_embedding"])
    assert pe.shape == (1, 37, 32) and np.array_equal(pe[:, :1], hf["embeddings.position_embeddings"][:, :1])
    grid = hf["embeddings.position_embeddings"][0, 1:].reshape(4, 4, 32)
    np.testing.assert_allclose(pe[0, 1:].reshape(6, 6, 32), resample.resample_grid(grid, (6, 6), "torch_bicubic"))
    assert p.image_size == (24, 24) and p.data_config["input_size"] == (3, 24, 24)
    state = timm_state(rng, **TIMM_CASES["deit3_small_patch16_224"])
    d = write_dir(
        tmp_path / "timm",
        state,
        {"architecture": "deit3_small_patch16_224", "num_classes": 5, "model_args": SHAPE_ARGS},
    )
    q = pretrained.load(d, image_size=8)
    np.testing.assert_allclose(
        q.params["Transformer"]["posembed_input"]["pos_embedding"][0].reshape(2, 2, 32),
        resample.resample_grid(state["pos_embed"][0].reshape(4, 4, 32), (2, 2), "timm"),
    )
    floored = pretrained.load(d, image_size=30)  # the libraries floor: 7x7 patches of 4 px, 2 pixels unused
    assert floored.params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 49, 32)
    config = {"architecture": "vit_base_patch16_224", "num_classes": 5, "model_args": SHAPE_ARGS}
    original = write_dir(tmp_path / "original", timm_state(rng), config)
    with pytest.raises(pretrained.PretrainedError, match="image_size=30 is not a multiple of the patch"):
        pretrained.load(original, image_size=30)  # the original family takes whole patches only


@pytest.mark.parametrize(
    "name,missing",
    [
        ("beit_base_patch16_224", "relative position bias"),
        ("vit_base_patch16_siglip_naflex", "NaFlex"),
        ("vit_small_patch16_18x2_parallel_224", "parallel blocks"),
        ("vit_base_patch16_diff_224", "differential attention"),
        ("eva02_large_patch14_clip_224", "scale_attn_inner"),
    ],
)
def test_a_family_not_computed_yet_is_one_line_naming_what_is_missing(name, missing, tmp_path):
    with pytest.raises(pretrained.PretrainedError, match=missing) as e:
        pretrained.load(str(tmp_path / "w.safetensors"), model=name)
    assert "\n" not in str(e.value)


def test_weights_of_one_family_under_anothers_name_name_the_tensors(tmp_path):
    state = timm_state(np.random.default_rng(4), **TIMM_CASES["vit_small_patch14_dinov2"])
    config = {"architecture": "vit_base_patch32_siglip_256", "num_classes": 0}
    with pytest.raises(pretrained.PretrainedError, match=r"does not fit vit_base_patch32_siglip_256.*cls") as e:
        pretrained.load(write_dir(tmp_path / "d", state, config))
    assert "LayerScale_0" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- fine-tuning


@pytest.mark.parametrize("model_type", ["dinov2_with_registers", "deit"])
def test_fine_tuning_takes_the_checkpoints_architecture_and_normalisation(model_type, tmp_path, caplog):
    from conftest import tiny_run_config

    from vit_jax import checkpoint, train
    from vit_jax import config as config_lib

    spec, hf_config = HF_CASES[model_type]
    rng = np.random.default_rng(5)
    hf = hf_state(timm_state(rng, **dict(spec, patch=2, image=8)), model_type, rng)
    source = write_dir(tmp_path / "src", hf, dict(hf_config, patch_size=2, image_size=8))
    config = tiny_run_config(total_steps=1, pretrained_path=source, **{"lr.base": 0.0, "lr.warmup_steps": 0})
    config.pp.crop = 7  # not a multiple of the patch: the next one is taken
    with caplog.at_level("INFO", logger="vit_jax"):
        resolved = config_lib.resolve(config, 1)
    assert "model.hidden_size=16 replaced by the checkpoint's 32" in caplog.text
    assert (resolved.model.hidden_size, resolved.model.transformer.num_layers, resolved.pp.crop) == (32, 2, 8)
    assert resolved.model.transformer.dropout_rate == 0.1  # training-time fields stay the config's
    assert resolved.pp.channels == 3 and resolved.pp.mean == (0.485, 0.456, 0.406)
    assert (resolved.model.reg_tokens or 0) == spec.get("reg", 0) and bool(resolved.model.distilled) == spec.get(
        "dist", False
    )
    train.train_and_evaluate(config, str(tmp_path / "run"))
    got = checkpoint.load(str(tmp_path / "run" / "model.npz"))
    loaded = pretrained.load(source)
    np.testing.assert_array_equal(got["embedding"]["kernel"], loaded.params["embedding"]["kernel"])  # lr 0
    np.testing.assert_array_equal(got["Transformer"]["posembed_input"]["pos_embedding"],
                                  loaded.params["Transformer"]["posembed_input"]["pos_embedding"])  # fmt: skip
    assert got["head"]["kernel"].shape == (32, 10) and not got["head"]["kernel"].any()  # a fresh head
    from vit_jax import export

    assert export.main(["--workdir", str(tmp_path / "run"), "--format", "timm", "--out", str(tmp_path / "x")]) == 0
    again = pretrained.load(str(tmp_path / "x"))
    assert (again.model_config.get("reg_tokens", 0), bool(again.model_config.get("distilled"))) == (
        spec.get("reg", 0),
        spec.get("dist", False),
    )
    assert again.data_config["mean"] == (0.485, 0.456, 0.406) and again.num_classes == 10


def test_rollout_leaves_registers_and_the_distillation_token_out():
    rng = np.random.default_rng(6)
    a = rng.uniform(size=(2, 1, 2, 9, 9))
    a /= a.sum(-1, keepdims=True)
    from vit_jax import analysis

    with_cls = analysis.rollout_from_weights(a, 5, class_token=True)  # cls + 4 registers, 2x2 patches
    without = analysis.rollout_from_weights(a, 5, class_token=False)  # 5 registers, no class token
    assert with_cls.shape == (1, 4) and without.shape == (1, 4)
    m = a.mean(2)[:, 0] + np.eye(9)
    m /= m.sum(-1, keepdims=True)
    r = m[1] @ m[0]
    np.testing.assert_allclose(with_cls[0], r[0, 5:])
    np.testing.assert_allclose(without[0], r[5:, 5:].mean(0))


def test_evaluate_and_analyze_run_on_a_backbone_with_registers(tmp_path, capsys):
    from PIL import Image

    from vit_jax import analyze, evaluate

    spec, config = HF_CASES["dinov2_with_registers"]
    rng = np.random.default_rng(7)
    hf = hf_state(timm_state(rng, **dict(spec, patch=2, image=8)), "dinov2_with_registers", rng)
    source = write_dir(tmp_path / "src", hf, dict(config, patch_size=2, image_size=8))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "analysis"
    assert (
        analyze.main(["--checkpoint", source, "--images", str(images), "--image_size", "12", "--outdir", str(out)]) == 0
    )
    assert "Analysed 2 images" in capsys.readouterr().out
    argv = ["--checkpoint", source, "--datasets", "digits", "--shots", "1", "--seeds", "0", "--json"]
    assert evaluate.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["digits"]) == {"fewshot", "knn", "linear_probe"} and 0 <= result["digits"]["knn"] <= 1


@pytest.mark.parametrize(
    "config,message",
    [
        ({"model_type": "beit"}, "model_type='beit' needs BEiT's relative position bias"),
        ({"model_type": "siglip2"}, "NaFlex"),
        (dict(SMALL, model_type="dinov2", hidden_act="relu"), "hidden_act='relu'"),
        (dict(SMALL, model_type="deit", qkv_bias=False), "qkv_bias=False"),
    ],
)
def test_a_transformers_config_we_do_not_compute_is_one_line(config, message, tmp_path):
    d = write_dir(tmp_path / "d", {"x": np.zeros(1, np.float32)}, config)
    with pytest.raises(pretrained.PretrainedError, match=message) as e:
        pretrained.load(d)
    assert "\n" not in str(e.value)


def test_pixels_past_the_last_whole_patch_are_left_out_as_the_libraries_do(tmp_path):
    """SigLIP so400m/14 at 384 px is 27x27 patches: the libraries' VALID convolution leaves the
    last pixels out; here an 18 px image with 4 px patches is the 16 px image."""
    spec = TIMM_CASES["vit_base_patch32_siglip_256"]
    state = timm_state(np.random.default_rng(8), **spec)
    config = {
        "architecture": "vit_so400m_patch14_siglip_384",
        "num_classes": 0,
        "model_args": dict(SHAPE_ARGS, img_size=18),
    }
    p = pretrained.load(write_dir(tmp_path / "d", state, config), image_size=18)
    images = np.random.default_rng(9).uniform(-1, 1, (2, 18, 18, 3)).astype(np.float32)
    logits, _ = run(p, images)
    expected, _ = timm_forward(state, images[:, :16, :16], **dict(spec, act="gelu"))
    assert p.model_config["patch_floor"] and rel_err(logits, expected) < 1e-5
    plain = dict(p.model_config, patch_floor=False)
    with pytest.raises(ValueError, match="does not divide the image size 18x18"):
        p.model(**plain).apply({"params": p.params}, images, train=False)
