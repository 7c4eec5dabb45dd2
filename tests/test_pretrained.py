"""Published weights in timm's and transformers' layouts, the Hub, and export; no torch, no network.

The layout files are written here from the libraries' definitions (names, (out, in) linear
weights, (D, C, P, P) patch kernels, timm's fused query|key|value rows), and the model loaded
from them is compared with a NumPy forward that reads those files directly, a route that
shares nothing with vit_jax's mapping.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import error_lines, hybrid_config, perturb, rel_err, run_main, tiny_config, tiny_run_config
from reference_numpy import gelu_erf, softmax, vit_forward
from safetensors.numpy import save_file

from vit_jax import checkpoint, models, pretrained, train
from vit_jax import config as config_lib
from vit_jax.weights import layouts as pretrained_layouts
from vit_jax.weights import npz


def make(config, num_classes=5, image=16, seed=0):
    model = models.VisionTransformer(num_classes=num_classes, **config)
    x = np.zeros((1, image, image, 3), np.float32)
    return model, perturb(model.init(jax.random.PRNGKey(seed), x)["params"], seed)


def same(a, b) -> bool:
    fa, fb = checkpoint.flatten(a), checkpoint.flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


def write_dir(directory, state, config):
    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, f"{directory}/model.safetensors")
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config, f)
    return str(directory)


# ----------------------------------------------------------------------------- a timm file, read by hand


def timm_state(rng, d=32, heads=4, layers=2, mlp=64, patch=4, grid=4, classes=5):
    """Random weights with timm's names and shapes (vision_transformer.py)."""
    n = lambda *shape: rng.normal(0, 0.2, shape).astype(np.float32)  # noqa: E731
    state = {
        "cls_token": n(1, 1, d),
        "pos_embed": n(1, grid * grid + 1, d),
        "patch_embed.proj.weight": n(d, 3, patch, patch),
        "patch_embed.proj.bias": n(d),
        "norm.weight": 1 + n(d),
        "norm.bias": n(d),
        "head.weight": n(classes, d),
        "head.bias": n(classes),
    }
    for i in range(layers):
        p = f"blocks.{i}."
        state.update(
            {
                p + "norm1.weight": 1 + n(d),
                p + "norm1.bias": n(d),
                p + "attn.qkv.weight": n(3 * d, d),
                p + "attn.qkv.bias": n(3 * d),
                p + "attn.proj.weight": n(d, d),
                p + "attn.proj.bias": n(d),
                p + "norm2.weight": 1 + n(d),
                p + "norm2.bias": n(d),
                p + "mlp.fc1.weight": n(mlp, d),
                p + "mlp.fc1.bias": n(mlp),
                p + "mlp.fc2.weight": n(d, mlp),
                p + "mlp.fc2.bias": n(d),
            }
        )
    return state


def timm_forward(s, images, heads, layers, eps=1e-6):
    """timm's VisionTransformer.forward in NumPy (exact GELU), from the state dict itself."""
    x = np.asarray(images, np.float64).transpose(0, 3, 1, 2)  # NCHW
    w = s["patch_embed.proj.weight"]
    p = w.shape[-1]
    b, c, h, wd = x.shape
    patches = x.reshape(b, c, h // p, p, wd // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    x = patches @ w.reshape(w.shape[0], -1).T + s["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(s["cls_token"], (b, 1, x.shape[-1])), x], 1) + s["pos_embed"]

    def ln(v, name):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + eps) * s[name + ".weight"] + s[name + ".bias"]

    def lin(v, name):
        return v @ s[name + ".weight"].T + s[name + ".bias"]

    for i in range(layers):
        q = f"blocks.{i}."
        t = x.shape[1]
        qkv = lin(ln(x, q + "norm1"), q + "attn.qkv").reshape(b, t, 3, heads, -1).transpose(2, 0, 3, 1, 4)
        att = softmax(qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / np.sqrt(qkv.shape[-1]))
        x = x + lin((att @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, t, -1), q + "attn.proj")
        x = x + lin(gelu_erf(lin(ln(x, q + "norm2"), q + "mlp.fc1")), q + "mlp.fc2")
    return lin(ln(x, "norm")[:, 0], "head")


def test_a_timm_directory_computes_what_timm_computes(tmp_path):
    rng = np.random.default_rng(0)
    state = timm_state(rng)
    d = write_dir(tmp_path / "m", state, {"architecture": "vit_tiny_patch16_224", "num_classes": 5})
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    expected = timm_forward(state, images, heads=4, layers=2)
    with pytest.raises(pretrained.PretrainedError, match="does not fit vit_tiny_patch16_224"):
        pretrained.load(d)  # the name says 192 wide, 12 blocks, 3 heads: not these weights
    with open(f"{d}/config.json", "w") as f:  # what our own exports write for a custom shape
        json.dump(
            {"architecture": "vit_base_patch16_224", "num_classes": 5, "model_args": {"num_heads": 4, "depth": 2}}, f
        )
    p = pretrained.load(d)
    assert p.model_config["gelu_approximate"] is False and p.model_config["transformer"]["num_heads"] == 4
    assert p.num_classes == 5 and p.image_size == (16, 16)
    got = p.model().apply({"params": p.params}, images, train=False)
    assert rel_err(got, expected) < 1e-5


def transformers_state(timm: dict, with_head: bool) -> dict:
    """The same weights under transformers' published names (query, key and value apart)."""
    out, prefix = {}, "vit." if with_head else ""
    d = timm["cls_token"].shape[-1]
    out[prefix + "embeddings.cls_token"] = timm["cls_token"]
    out[prefix + "embeddings.position_embeddings"] = timm["pos_embed"]
    out[prefix + "embeddings.patch_embeddings.projection.weight"] = timm["patch_embed.proj.weight"]
    out[prefix + "embeddings.patch_embeddings.projection.bias"] = timm["patch_embed.proj.bias"]
    i = 0
    while f"blocks.{i}.norm1.weight" in timm:
        t, h = f"blocks.{i}.", f"{prefix}encoder.layer.{i}."
        for j, name in enumerate(("query", "key", "value")):
            out[f"{h}attention.attention.{name}.weight"] = timm[t + "attn.qkv.weight"][j * d : (j + 1) * d]
            out[f"{h}attention.attention.{name}.bias"] = timm[t + "attn.qkv.bias"][j * d : (j + 1) * d]
        for ours, theirs in [
            ("attention.output.dense", "attn.proj"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
            ("layernorm_before", "norm1"),
            ("layernorm_after", "norm2"),
        ]:
            out[f"{h}{ours}.weight"], out[f"{h}{ours}.bias"] = timm[t + theirs + ".weight"], timm[t + theirs + ".bias"]
        i += 1
    out[prefix + "layernorm.weight"], out[prefix + "layernorm.bias"] = timm["norm.weight"], timm["norm.bias"]
    if with_head:
        out["classifier.weight"], out["classifier.bias"] = timm["head.weight"], timm["head.bias"]
    return out


def hf_config(**extra):
    return {
        "model_type": "vit",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "image_size": 16,
        "patch_size": 4,
        **extra,
    }


def test_a_transformers_directory_computes_what_transformers_computes(tmp_path):
    rng = np.random.default_rng(1)
    timm = timm_state(rng)
    d = write_dir(
        tmp_path / "hf", transformers_state(timm, True), hf_config(id2label={str(i): f"c{i}" for i in range(5)})
    )
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    p = pretrained.load(d)
    assert p.model_config["layernorm_epsilon"] == 1e-12 and p.class_names == ["c0", "c1", "c2", "c3", "c4"]
    got = p.model().apply({"params": p.params}, images, train=False)
    assert rel_err(got, timm_forward(timm, images, heads=4, layers=2, eps=1e-12)) < 1e-5


def test_a_transformers_vitmodel_pooler_is_the_pre_logits_layer(tmp_path):
    rng = np.random.default_rng(2)
    state = transformers_state(timm_state(rng), False)
    state["pooler.dense.weight"], state["pooler.dense.bias"] = rng.normal(0, 0.2, (32, 32)), rng.normal(0, 0.2, 32)
    p = pretrained.load(write_dir(tmp_path / "m", state, hf_config(architectures=["ViTModel"])))
    assert p.num_classes == 0 and p.model_config["representation_size"] == 32
    images = rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    features = p.model().apply({"params": p.params}, images, train=False)
    _, out = p.model().apply({"params": p.params}, images, train=False, return_intermediates=True)
    encoded = np.asarray(out["encoded"], np.float64)[:, 0]
    expected = np.tanh(encoded @ state["pooler.dense.weight"].T + state["pooler.dense.bias"])
    assert rel_err(features, expected) < 1e-5


def test_transformers_5_names_read_like_the_published_ones():
    published = {"vit.encoder.layer.0.attention.attention.query.weight": 1, "vit.encoder.layer.0.output.dense.bias": 2}
    renamed = {"vit.layers.0.attention.q_proj.weight": 1, "vit.layers.0.mlp.fc2.bias": 2}
    assert pretrained_layouts._hf_published_names(renamed) == pretrained_layouts._hf_published_names(published)


# ----------------------------------------------------------------------------- round trips and numerics


@pytest.mark.parametrize("fmt", ["timm", "hf"])
def test_npz_to_layout_to_npz_is_bitwise(tmp_path, fmt):
    _, params = make(tiny_config())
    checkpoint.save(params, tmp_path / "a.npz")
    with pytest.raises(pretrained.PretrainedError, match="number of heads of a width-32 model"):
        pretrained.load(str(tmp_path / "a.npz"))  # not a registered name, not a standard width: heads unknown
    out = pretrained.export(params, tiny_config(), str(tmp_path / fmt), fmt)
    back = pretrained.load(out)
    pretrained.export(back.params, back.model_config, str(tmp_path / "b.npz"), "npz")
    assert same(checkpoint.load(str(tmp_path / "b.npz")), params)
    assert back.model_config["transformer"]["num_heads"] == 4 and back.model_config["gelu_approximate"] is True


def test_timm_layout_round_trips_hybrids_and_gap_heads():
    for config in (hybrid_config(), tiny_config(classifier="gap")):
        _, params = make(config)
        state = pretrained_layouts.to_timm(params)
        back, unused = pretrained_layouts.from_timm(state, 4)
        assert not unused and same(back, params)
    names = set(pretrained_layouts.to_timm(make(hybrid_config())[1]))
    assert {
        "patch_embed.backbone.stem.conv.weight",
        "patch_embed.backbone.stem.norm.weight",
        "patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight",
        "patch_embed.backbone.stages.1.blocks.0.conv3.weight",
        "patch_embed.backbone.stages.1.blocks.0.norm2.bias",
        "patch_embed.proj.weight",
        "blocks.1.attn.qkv.weight",
    } <= names


@pytest.mark.parametrize("numerics", ["original", "timm"])
def test_hybrid_numerics_follow_the_config(numerics):
    """timm's hybrids standardise by sqrt(var + 1e-8) and use GroupNorm epsilon 1e-5; the fields say so."""
    config = hybrid_config()
    if numerics == "timm":
        config["resnet"] = dict(config["resnet"], ws_epsilon=1e-8, ws_epsilon_in_sqrt=True, gn_epsilon=1e-5)
        config.update(gelu_approximate=False, layernorm_epsilon=1e-6)
    model, params = make(config, image=32)
    images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    got = model.apply({"params": params}, images, train=False)
    assert rel_err(got, vit_forward(params, images, config)) < 2e-5


def test_layernorm_epsilon_and_exact_gelu_reach_every_layer(images):
    config = tiny_config(layernorm_epsilon=1e-2, gelu_approximate=False)
    model, params = make(config)
    got = model.apply({"params": params}, images, train=False)
    assert rel_err(got, vit_forward(params, images, config)) < 1e-5
    default = models.VisionTransformer(num_classes=5, **tiny_config()).apply({"params": params}, images, train=False)
    assert rel_err(default, got) > 1e-4  # the fields change the numbers


# ----------------------------------------------------------------------------- the Hub


def test_hf_hub_source_goes_through_huggingface_hub(tmp_path, monkeypatch):
    import huggingface_hub

    _, params = make(tiny_config())
    local = pretrained.export(params, tiny_config(), str(tmp_path / "published"), "timm")
    asked = []

    def fake_snapshot_download(repo_id, **kw):  # what the real one does once the files are cached
        asked.append((repo_id, kw.get("allow_patterns")))
        target = tmp_path / "cache" / repo_id.replace("/", "--")
        shutil.copytree(local, target, dirs_exist_ok=True)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    p = pretrained.load("hf-hub:someone/tiny-vit")
    assert asked == [("someone/tiny-vit", ["config.json", "model.safetensors", "preprocessor_config.json"])]
    assert p.source == "hf-hub:someone/tiny-vit" and same(p.params, params)


def test_an_offline_hub_id_is_one_line_naming_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    proc = run_main("--config", "configs/quickstart.py", "--workdir", str(tmp_path / "w"),
                    "--config.pretrained_path=hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")  # fmt: skip
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k" in lines[0] and "hf download" in lines[0]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- bad input


def test_bad_sources_end_in_one_clear_error(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match=r"pass model="):
        pretrained.load(str(tmp_path / "w.safetensors"))
    with pytest.raises(pretrained.PretrainedError, match="not found"):
        pretrained.load(str(tmp_path / "w.safetensors"), model="ViT-B_16")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(pretrained.PretrainedError, match="not a readable .safetensors"):
        pretrained.load(str(tmp_path / "junk.safetensors"), model="ViT-B_16")
    with pytest.raises(pretrained.PretrainedError, match="Unknown architecture 'resnet50'"):
        pretrained.load(str(tmp_path / "junk.safetensors"), model="resnet50")
    (tmp_path / "empty").mkdir()
    with pytest.raises(pretrained.PretrainedError, match="no config.json"):
        pretrained.load(str(tmp_path / "empty"))


def test_weights_of_another_architecture_name_every_mismatching_array(tmp_path):
    _, params = make(tiny_config())
    state = pretrained_layouts.to_timm(params)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(pretrained.PretrainedError) as e:
        pretrained.load(str(tmp_path / "w.safetensors"), model="vit_small_patch16_224")
    message = str(e.value)
    assert "does not fit vit_small_patch16_224" in message and "\n" not in message
    for name in ("embedding/kernel", "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", "cls"):
        assert name in message
    assert "Transformer/encoderblock_11/LayerNorm_0/scale" in message  # blocks the weights lack, too


def test_exports_that_a_layout_cannot_hold_are_refused(tmp_path):
    _, params = make(tiny_config(classifier="gap"))
    with pytest.raises(pretrained.PretrainedError, match="transformers cannot hold this model"):
        pretrained.export(params, tiny_config(classifier="gap"), str(tmp_path / "x"), "hf")
    with pytest.raises(pretrained.PretrainedError, match="format='onnx'"):
        pretrained.export(params, tiny_config(), str(tmp_path / "x"), "onnx")


# ----------------------------------------------------------------------------- training and the tools


def test_fine_tuning_from_a_timm_directory_takes_its_model_fields(tmp_path):
    kw = dict(tiny_config(), hidden_size=16, transformer=dict(mlp_dim=32, num_heads=2, num_layers=1))
    model = models.VisionTransformer(num_classes=7, **kw)
    params = perturb(model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)))["params"])
    source = pretrained.export(params, dict(kw, gelu_approximate=False), str(tmp_path / "timm"), "timm")
    config = tiny_run_config(total_steps=1, pretrained_path=source, **{"lr.base": 0.0, "lr.warmup_steps": 0})
    for field in ("hidden_size", "patches.size"):
        *parents, leaf = f"model.{field}".split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = None  # the config names no architecture: the checkpoint's is taken
    config.model.transformer.mlp_dim = config.model.transformer.num_heads = None
    config.model.transformer.num_layers = None
    resolved = config_lib.resolve(config, 1)
    assert (resolved.model.hidden_size, resolved.model.transformer.num_heads) == (16, 2)
    assert resolved.model.gelu_approximate is False
    train.train_and_evaluate(config, str(tmp_path / "run"))
    got = checkpoint.load(str(tmp_path / "run" / "model.npz"))
    np.testing.assert_array_equal(got["embedding"]["kernel"], params["embedding"]["kernel"])  # lr 0
    assert got["head"]["kernel"].shape == (16, 10) and not got["head"]["kernel"].any()  # a fresh head


def test_predict_takes_a_model_directory_without_model(tmp_path, capsys):
    from PIL import Image

    from vit_jax import predict

    _, params = make(tiny_config(), num_classes=3)
    d = pretrained.export(params, tiny_config(), str(tmp_path / "m"), "hf", class_names=["cat", "dog", "bird"])
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    assert predict.main(["--checkpoint", d, str(tmp_path / "a.png"), "--json"]) == 0
    top = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top"]
    assert {r["name"] for r in top} == {"cat", "dog", "bird"}


def test_a_remote_file_that_cannot_be_fetched_is_a_network_failure_not_a_damaged_file(monkeypatch):
    def unreachable(path, mode):
        raise OSError("Could not resolve host: storage.googleapis.com")

    monkeypatch.setattr(npz, "open_file", unreachable)
    with pytest.raises(checkpoint.CheckpointError) as e:
        pretrained.load("gs://vit_models/imagenet21k/ViT-B_16.npz")
    message = str(e.value)
    assert "gs://vit_models/imagenet21k/ViT-B_16.npz" in message and "network or storage failure" in message
    assert "not a damaged file" in message and "zip" not in message


def test_weights_missing_a_layer_of_the_layout_are_one_error(tmp_path):
    state = timm_state(np.random.default_rng(4))
    del state["blocks.1.attn.qkv.bias"]  # e.g. a variant without attention biases
    d = write_dir(tmp_path / "m", state, {"architecture": "vit_base_patch16_224", "model_args": {"num_heads": 4}})
    with pytest.raises(pretrained.PretrainedError, match=r"has no 'blocks\.1\.attn\.qkv\.bias'"):
        pretrained.load(d)


@pytest.mark.parametrize(
    "overrides,field,value",
    [({"classifier": "map"}, "classifier", "map"), ({"posemb": "learn_2d"}, "posemb", "learn_2d")],
)
def test_the_config_read_off_the_weights_knows_our_heads_and_embeddings(overrides, field, value):
    _, params = make(tiny_config(**overrides))
    assert pretrained.config_from_params(params, 4)[field] == value
    _, params = make(tiny_config(posemb="sincos2d"))
    with pytest.raises(pretrained.PretrainedError, match="no position-embedding table"):
        pretrained.config_from_params(params, 4)
