"""Checkpoint tests: the published .npz layout both ways, resizing worked by hand,
and every fine-tuning path of load_pretrained (token, gap, hybrid, scan)."""

import jax
import numpy as np
import pytest
from conftest import hybrid_config, perturb, rel_err, tiny_config
from reference_numpy import vit_forward

from vit_jax import checkpoint, models
from vit_jax.checkpoint import CheckpointError
from vit_jax.configs.models import MODEL_CONFIGS


def make(config, image=(16, 16), num_classes=5, seed=0, **kw):
    model = models.VisionTransformer(num_classes=num_classes, **config, **kw)
    x = np.zeros((1, *image, 3), np.float32)
    return model, model.init(jax.random.PRNGKey(seed), x, train=False)["params"]


def trees_equal(a, b):
    fa, fb = checkpoint.flatten(a), checkpoint.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


# ----------------------------------------------------------------------------- file format


def test_save_writes_the_published_layout(tmp_path):
    _, p = make(tiny_config())
    path = tmp_path / "ckpt.npz"
    checkpoint.save(p, path)
    keys = set(np.load(path).files)
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in keys
    assert "Transformer/encoderblock_0/LayerNorm_2/scale" in keys
    assert "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias" in keys
    assert "Transformer/encoderblock_0/LayerNorm_1/scale" not in keys
    assert {"cls", "embedding/kernel", "head/bias", "Transformer/posembed_input/pos_embedding"} <= keys
    trees_equal(checkpoint.load(path), p)


def test_hybrid_round_trip_and_old_groupnorm_shapes(tmp_path):
    model, p = make(hybrid_config(), image=(16, 16))
    p = perturb(p)
    path = tmp_path / "hybrid.npz"
    checkpoint.save(p, path)
    raw = np.load(path)
    assert raw["gn_root/scale"].shape == (1, 1, 1, 32)
    assert raw["block2/unit1/gn_proj/bias"].shape == (1, 1, 1, 256)
    loaded = checkpoint.load(path)
    assert loaded["block1"]["unit1"]["gn1"]["scale"].shape == (32,)
    trees_equal(loaded, p)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.apply({"params": loaded}, x), model.apply({"params": p}, x))


def test_load_converts_pre_linen_names_by_hand(tmp_path):
    """An .npz written the way the original release's files are (built key by key here)."""
    config = MODEL_CONFIGS["testing"]
    model, p = make(config, image=(32, 32), num_classes=3)
    p = perturb(p)
    rename = {
        "LayerNorm_1": "LayerNorm_2",
        "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
        "MlpBlock_0": "MlpBlock_3",
    }
    old = {}
    for k, v in checkpoint.flatten(p).items():
        parts = k.split("/")
        parts = [rename.get(s, s) if i == 2 else s for i, s in enumerate(parts)]
        old["/".join(parts)] = np.asarray(v)
    assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in old
    np.savez(tmp_path / "ViT-testing.npz", **old)
    loaded = checkpoint.load(str(tmp_path / "ViT-testing.npz"))
    trees_equal(loaded, p)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    ours = models.VisionTransformer(num_classes=3, **config).apply({"params": loaded}, x, train=False)
    ref = vit_forward(jax.tree.map(lambda a: np.asarray(a, np.float64), loaded), x, config)
    assert rel_err(ours, ref) < 1e-5


def test_convert_pre_linen_orders_numbers_naturally():
    tree = {f"encoderblock_{i}": {"LayerNorm_0": i, "MlpBlock_3": i, "LayerNorm_2": -i} for i in range(12)}
    out = checkpoint.convert_pre_linen(tree)
    assert out["encoderblock_10"] == {"LayerNorm_0": 10, "LayerNorm_1": -10, "MlpBlock_0": 10}


def test_stacked_layout_round_trip(tmp_path):
    config = tiny_config(transformer=dict(mlp_dim=48, num_heads=4, num_layers=3))
    plain, p = make(config)
    scanned, ps = make(config, scan=True)
    p = perturb(p)
    stacked = checkpoint.stack_blocks(p)
    assert jax.tree.structure(stacked) == jax.tree.structure(ps)
    assert stacked["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (3, 32)
    checkpoint.save(stacked, tmp_path / "s.npz")  # a scanned model saves per-block files
    assert "Transformer/encoderblock_2/LayerNorm_0/scale" in np.load(tmp_path / "s.npz").files
    trees_equal(checkpoint.load(tmp_path / "s.npz"), p)
    trees_equal(checkpoint.load(tmp_path / "s.npz", stacked=True), stacked)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(
        scanned.apply({"params": checkpoint.load(tmp_path / "s.npz", stacked=True)}, x),
        plain.apply({"params": p}, x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found: .*nope\.npz.*Hugging Face Hub"):
        checkpoint.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(
        CheckpointError, match=r"bad.npz is not a readable .npz checkpoint \(not a zip archive.*ViT-B_16"
    ):
        checkpoint.load(bad)
    _, p = make(tiny_config())
    good = tmp_path / "good.npz"
    checkpoint.save(p, good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.npz is not a readable"):
        checkpoint.load(truncated)
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(CheckpointError, match="holds no arrays"):
        checkpoint.load(tmp_path / "empty.npz")


# ----------------------------------------------------------------------------- resizing


def test_interpolate_2x2_to_4x4_by_hand():
    """Corner-aligned linear spline: new samples at 0, 1/3, 2/3, 1 of the old grid."""
    a, b, c, d = 1.0, 4.0, 7.0, 13.0
    posemb = np.array([a, b, c, d], np.float32).reshape(1, 4, 1)
    out = checkpoint.interpolate_posembed(posemb, 16, has_class_token=False)[0, :, 0].reshape(4, 4)
    t = np.array([0, 1 / 3, 2 / 3, 1])
    top, bottom = a + (b - a) * t, c + (d - c) * t
    expected = top[None, :] + (bottom - top)[None, :] * t[:, None]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out[0, 0] == a and out[3, 3] == d


def test_interpolate_keeps_the_cls_row_apart_and_handles_non_square():
    rng = np.random.default_rng(0)
    posemb = rng.normal(size=(1, 1 + 2 * 3, 4)).astype(np.float32)
    out = checkpoint.interpolate_posembed(posemb, 1 + 3 * 5, True, old_grid_shape=(2, 3), new_grid_shape=(3, 5))
    assert out.shape == (1, 16, 4)
    np.testing.assert_array_equal(out[0, 0], posemb[0, 0])
    grid = posemb[0, 1:].reshape(2, 3, 4)
    new = out[0, 1:].reshape(3, 5, 4)
    # Row 1 of 3 sits halfway between old rows; column 2 of 5 at old column 1 (exact).
    np.testing.assert_allclose(new[1, 2], (grid[0, 1] + grid[1, 1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(new[2, 4], grid[1, 2], rtol=1e-6)
    with pytest.raises(CheckpointError, match="not square; pass new_grid_shape"):
        checkpoint.interpolate_posembed(posemb, 1 + 15, True, old_grid_shape=(2, 3))


def test_interpolate_bilinear_is_half_pixel():
    posemb = np.array([0.0, 4.0, 0.0, 4.0], np.float32).reshape(1, 4, 1)  # columns 0 and 4
    out = checkpoint.interpolate_posembed(posemb, 16, False, method="bilinear")[0, :, 0].reshape(4, 4)
    # Samples at -0.25, 0.25, 0.75, 1.25 in old pixel units, clamped at the edges.
    np.testing.assert_allclose(out[0], [0.0, 1.0, 3.0, 4.0], atol=1e-6)
    cubic = checkpoint.interpolate_posembed(posemb, 16, False, method="bicubic")
    assert cubic.shape == (1, 16, 1)
    with pytest.raises(ValueError, match="Unknown resize method"):
        checkpoint.interpolate_posembed(posemb, 16, False, method="area")


# ----------------------------------------------------------------------------- load_pretrained


@pytest.fixture
def token_ckpt(tmp_path):
    """A pretrained token model (with a representation layer) at 16x16 px, 4x4 grid."""
    cfg = tiny_config(representation_size=16)
    _, p = make(cfg, num_classes=9)
    p = perturb(p)
    path = tmp_path / "token.npz"
    checkpoint.save(p, path)
    return path, p


def test_fresh_parameters_come_from_the_initialisation(token_ckpt):
    """`fresh` (config.pretrained_fresh): the position embedding freshly initialised, the rest the
    checkpoint's, at a higher resolution; a prefix that names nothing is one error."""
    path, old = token_ckpt
    cfg = tiny_config()
    model, init = make(cfg, image=(32, 32), num_classes=3, seed=1)
    new = checkpoint.load_pretrained(
        pretrained_path=str(path), init_params=init, model_config=cfg, fresh=("Transformer/posembed_input",)
    )
    np.testing.assert_array_equal(
        new["Transformer"]["posembed_input"]["pos_embedding"], init["Transformer"]["posembed_input"]["pos_embedding"]
    )
    np.testing.assert_array_equal(new["cls"], old["cls"])
    trees_equal(new["Transformer"]["encoderblock_0"], old["Transformer"]["encoderblock_0"])
    with pytest.raises(CheckpointError, match="pretrained_fresh=.*names no parameter"):
        checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg, fresh=("posemb",))


def test_keep_head_takes_the_checkpoints_classifier(token_ckpt):
    """`keep_head` (config.pretrained_keep_head): the same task at a higher resolution keeps the
    checkpoint's head; a head of another number of classes is one error naming both shapes."""
    path, old = token_ckpt  # 9 classes, a 16-wide representation layer before the head
    cfg = tiny_config(representation_size=16)
    _, init = make(cfg, image=(32, 32), num_classes=9, seed=1)
    new = checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg, keep_head=True)
    trees_equal(new["head"], old["head"])
    trees_equal(new["pre_logits"], old["pre_logits"])
    assert not np.array_equal(new["head"]["kernel"], init["head"]["kernel"])
    assert new["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 64, 32)
    _, init3 = make(cfg, image=(32, 32), num_classes=3, seed=1)
    with pytest.raises(CheckpointError, match=r"pretrained_keep_head.*\(16, 9\).*\(16, 3\)"):
        checkpoint.load_pretrained(pretrained_path=str(path), init_params=init3, model_config=cfg, keep_head=True)


def test_fine_tune_token_at_higher_resolution(token_ckpt):
    path, old = token_ckpt
    cfg = tiny_config()
    model, init = make(cfg, image=(32, 32), num_classes=3, seed=1)
    new = checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg)
    assert "pre_logits" not in new  # representation_size None -> dropped
    np.testing.assert_array_equal(new["head"]["kernel"], init["head"]["kernel"])
    np.testing.assert_array_equal(new["cls"], old["cls"])
    posemb = new["Transformer"]["posembed_input"]["pos_embedding"]
    assert posemb.shape == (1, 1 + 64, 32)
    np.testing.assert_array_equal(posemb[0, 0], old["Transformer"]["posembed_input"]["pos_embedding"][0, 0])
    expected = checkpoint.interpolate_posembed(old["Transformer"]["posembed_input"]["pos_embedding"], 65, True)
    np.testing.assert_allclose(posemb, expected, rtol=1e-6)
    trees_equal(new["Transformer"]["encoderblock_1"], old["Transformer"]["encoderblock_1"])
    assert model.apply({"params": new}, np.zeros((1, 32, 32, 3))).shape == (1, 3)


def test_keep_representation_layer(token_ckpt):
    path, old = token_ckpt
    cfg = tiny_config(representation_size=16)
    _, init = make(cfg, num_classes=3)
    new = checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg)
    np.testing.assert_array_equal(new["pre_logits"]["kernel"], old["pre_logits"]["kernel"])


def test_token_checkpoint_into_gap_model(token_ckpt):
    path, old = token_ckpt
    cfg = tiny_config(classifier="gap")
    model, init = make(cfg, image=(24, 24), num_classes=3)
    new = checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg)
    assert "cls" not in new
    posemb = new["Transformer"]["posembed_input"]["pos_embedding"]
    assert posemb.shape == (1, 36, 32)
    expected = checkpoint.interpolate_posembed(old["Transformer"]["posembed_input"]["pos_embedding"][:, 1:], 36, False)
    np.testing.assert_allclose(posemb, expected, rtol=1e-6)
    assert np.isfinite(model.apply({"params": new}, np.ones((1, 24, 24, 3)))).all()


@pytest.mark.parametrize("classifier,cls_expected", [("token", True), ("token_unpooled", True), ("unpooled", False)])
def test_gap_checkpoint_into_token_and_unpooled_models(tmp_path, classifier, cls_expected):
    _, gap = make(tiny_config(classifier="gap"))
    gap = perturb(gap)
    checkpoint.save(gap, tmp_path / "gap.npz")
    cfg = tiny_config(classifier=classifier)
    model, init = make(cfg, num_classes=3, seed=4)
    new = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "gap.npz"), init_params=init, model_config=cfg)
    assert ("cls" in new) == cls_expected
    posemb = new["Transformer"]["posembed_input"]["pos_embedding"]
    old_posemb = gap["Transformer"]["posembed_input"]["pos_embedding"]
    if cls_expected:
        np.testing.assert_array_equal(new["cls"], init["cls"])  # fresh cls
        np.testing.assert_array_equal(posemb[0, 0], init["Transformer"]["posembed_input"]["pos_embedding"][0, 0])
        np.testing.assert_array_equal(posemb[:, 1:], old_posemb)
    else:
        np.testing.assert_array_equal(posemb, old_posemb)
    model.apply({"params": new}, np.zeros((1, 16, 16, 3)))


def test_hybrid_fine_tune_at_new_resolution(tmp_path):
    _, p = make(hybrid_config(), image=(16, 16))  # grid 2x2
    checkpoint.save(perturb(p), tmp_path / "h.npz")
    cfg = hybrid_config()
    model, init = make(cfg, image=(32, 32), num_classes=4)  # grid 4x4
    new = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "h.npz"), init_params=init, model_config=cfg)
    assert new["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)
    assert new["gn_root"]["scale"].shape == (32,)
    assert np.isfinite(model.apply({"params": new}, np.ones((1, 32, 32, 3)))).all()


def test_load_pretrained_into_a_scanned_model(token_ckpt):
    path, old = token_ckpt
    cfg = tiny_config()
    _, init = make(cfg, num_classes=3, scan=True)
    new = checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg)
    assert jax.tree.structure(new) == jax.tree.structure(init)
    np.testing.assert_array_equal(
        new["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"][1],
        old["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"],
    )


def test_posemb_variants_resize(tmp_path):
    for posemb in ("learn_2d", "relative"):
        cfg = tiny_config(posemb=posemb)
        _, p = make(cfg)
        checkpoint.save(perturb(p), tmp_path / f"{posemb}.npz")
        model, init = make(cfg, image=(32, 24), num_classes=2)
        new = checkpoint.load_pretrained(
            pretrained_path=str(tmp_path / f"{posemb}.npz"), init_params=init, model_config=cfg
        )
        jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), np.shape(b)), new, init)
        model.apply({"params": new}, np.zeros((1, 32, 24, 3)))
    table = new["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]["relative_bias"]
    assert table.shape == (15, 11, 4)


def test_another_architecture_is_named(token_ckpt):
    path, _ = token_ckpt
    cfg = tiny_config(hidden_size=48, transformer=dict(mlp_dim=48, num_heads=4, num_layers=2))
    _, init = make(cfg, num_classes=3)
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the model.*embedding/kernel: checkpoint \(4, 4, 3, 32\) vs model \(4, 4, 3, 48\)",
    ):
        checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=cfg)


def test_missing_and_extra_keys_are_listed(token_ckpt):
    path, old = token_ckpt
    deeper = tiny_config(transformer=dict(mlp_dim=48, num_heads=4, num_layers=3))
    _, init = make(deeper, num_classes=3)
    with pytest.raises(CheckpointError, match=r"lacks \d+ parameter\(s\).*encoderblock_2/LayerNorm_0/bias"):
        checkpoint.load_pretrained(pretrained_path=str(path), init_params=init, model_config=deeper)
    new = checkpoint.load_pretrained(
        pretrained_path=str(path), init_params=init, model_config=deeper, allow_missing=True
    )
    np.testing.assert_array_equal(new["Transformer"]["encoderblock_2"]["LayerNorm_0"]["scale"], 1.0)
    np.testing.assert_array_equal(
        new["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"],
        old["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"],
    )

    shallow = tiny_config(transformer=dict(mlp_dim=48, num_heads=4, num_layers=1))
    _, init1 = make(shallow, num_classes=3)
    with pytest.raises(CheckpointError, match=r"has \d+ parameter\(s\) the model lacks: .*encoderblock_1/"):
        checkpoint.load_pretrained(pretrained_path=str(path), init_params=init1, model_config=shallow)
    new1 = checkpoint.load_pretrained(
        pretrained_path=str(path), init_params=init1, model_config=shallow, allow_extra=True
    )
    assert "encoderblock_1" not in new1["Transformer"]


def test_load_pretrained_missing_file(tmp_path):
    cfg = tiny_config()
    _, init = make(cfg)
    with pytest.raises(CheckpointError, match=r"ViT-B_16\.npz.*published"):
        checkpoint.load_pretrained(pretrained_path=str(tmp_path / "ViT-B_16.npz"), init_params=init, model_config=cfg)


# The full-size hybrid (18 s) is slow: test_models' small hybrid against the same float64
# reference and the hybrid round trip above cover its code paths.
@pytest.mark.parametrize("name", ["ViT-B_16", pytest.param("R50+ViT-B_16", marks=pytest.mark.slow)])
def test_full_size_model_from_published_layout_matches_reference(tmp_path, name):
    """Real-size models through an original-format file: logits within 1e-5 of float64."""
    config = MODEL_CONFIGS[name]
    model = models.VisionTransformer(num_classes=10, **config)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    p = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"])(x)
    checkpoint.save(perturb(p, scale=0.02), tmp_path / f"{name}.npz")
    loaded = checkpoint.load(str(tmp_path / f"{name}.npz"))
    ours = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(loaded, x)
    ref = vit_forward(jax.tree.map(lambda a: np.asarray(a, np.float64), loaded), x, config.to_dict())
    assert rel_err(ours, ref) < 1e-5
