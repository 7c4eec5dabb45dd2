"""Model tests: numerics against an independent NumPy forward, hand-computed values,
every option against the plain model, and the parameter-count table."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hybrid_config, perturb, rel_err, tiny_config
from reference_numpy import vit_forward

from vit_jax import checkpoint, models, models_blocks, models_posemb
from vit_jax.configs.models import AUGREG_CONFIGS, MODEL_CONFIGS, SHORT_NAMES, get_config

# Parameter counts of the original release at 224 px with 1000 classes.
MODEL_SIZES = {
    "R+ViT-Ti_16": 6_337_704,
    "R26+ViT-B_32": 101_383_976,
    "R26+ViT-S_32": 36_431_912,
    "R50+ViT-B_16": 98_659_112,
    "R50+ViT-L_32": 328_994_856,
    "ViT-B_8": 86_576_872,
    "ViT-B_16": 86_567_656,
    "ViT-B_16-gap-norep": 86_566_120,
    "ViT-B_32": 88_224_232,
    "ViT-B_32-gap-norep": 88_222_696,
    "ViT-H_14": 632_045_800,
    "ViT-L_16": 304_326_632,
    "ViT-L_32": 306_535_400,
    "ViT-S_16": 22_050_664,
    "ViT-S_16-gap-norep": 22_049_896,
    "ViT-S_32": 22_878_952,
    "ViT-S_32-gap-norep": 22_878_184,
    "ViT-Ti_16": 5_717_416,
    "testing": 21_390,
    "testing-unpooled": 21_370,
}


def init(model, x, seed=0):
    return model.init(jax.random.PRNGKey(seed), x, train=False)["params"]


def count_params(model, shape=(2, 224, 224, 3)):
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract))


def test_every_registered_model_is_in_the_table():
    # Exactly the original's names: its own test requires every entry to be in its table.
    assert set(MODEL_CONFIGS) == set(MODEL_SIZES)
    assert list(MODEL_CONFIGS)[:3] == ["testing", "testing-unpooled", "ViT-Ti_16"]


@pytest.mark.parametrize("name", sorted(MODEL_SIZES))
def test_parameter_count(name):
    model = models.VisionTransformer(num_classes=1000, **MODEL_CONFIGS[name])
    assert count_params(model) == MODEL_SIZES[name]


def test_unpooled_testing_model_gives_a_logit_per_patch():
    model = models.get_model("testing-unpooled", num_classes=1000)
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 224, 224, 3)), train=False)
    assert model.apply(variables, jnp.ones((2, 224, 224, 3)), train=False).shape == (2, 196, 1000)
    assert "cls" not in variables["params"]


def test_augreg_names_follow_the_checkpoint_file_names():
    # The models AugReg published, named as in its file names (no 'ViT-', '_' for '+').
    expected = {"Ti_16", "S_16", "B_16", "L_16", "B_8", "S_32", "B_32", "R_Ti_16", "R26_B_32", "R26_S_32", "R50_L_32"}
    assert expected <= set(AUGREG_CONFIGS)
    assert not {"L_32", "H_14", "R50_B_16", "testing"} & set(AUGREG_CONFIGS)
    assert AUGREG_CONFIGS["R26_S_32"] is MODEL_CONFIGS["R26+ViT-S_32"]
    assert AUGREG_CONFIGS["B_16-gap-norep"] is MODEL_CONFIGS["ViT-B_16-gap-norep"]


def test_short_names_resolve():
    # Aliases resolve through the lookup; the registry itself holds only the original names.
    for short, name in SHORT_NAMES.items():
        assert short not in MODEL_CONFIGS
        assert get_config(short).to_dict() == MODEL_CONFIGS[name].to_dict()
    assert {"Ti/16", "S/16", "B/16", "L/16", "H/14", "B/8", "S/32", "B/32", "L/32", "R50+B/16"} <= set(SHORT_NAMES)
    assert get_config("B/16").model_name == "ViT-B_16"
    assert get_config("R50+B/16").model_name == "R50+ViT-B_16"
    assert models.get_model("S/32", num_classes=3).hidden_size == 384
    with pytest.raises(KeyError, match="Unknown model 'ViT-Q_16'"):
        get_config("ViT-Q_16")


def test_parameter_tree_has_the_original_names():
    model = models.VisionTransformer(num_classes=5, **MODEL_CONFIGS["testing"])
    p = init(model, np.zeros((1, 32, 32, 3), np.float32))
    flat = checkpoint.flatten(p)
    block = "Transformer/encoderblock_0/"
    expected = {
        "cls": (1, 1, 10),
        "embedding/kernel": (16, 16, 3, 10),
        "embedding/bias": (10,),
        "Transformer/posembed_input/pos_embedding": (1, 5, 10),
        block + "LayerNorm_0/scale": (10,),
        block + "MultiHeadDotProductAttention_0/query/kernel": (10, 2, 5),
        block + "MultiHeadDotProductAttention_0/query/bias": (2, 5),
        block + "MultiHeadDotProductAttention_0/out/kernel": (2, 5, 10),
        block + "MultiHeadDotProductAttention_0/out/bias": (10,),
        block + "LayerNorm_1/bias": (10,),
        block + "MlpBlock_0/Dense_0/kernel": (10, 10),
        block + "MlpBlock_0/Dense_1/bias": (10,),
        "Transformer/encoder_norm/scale": (10,),
        "head/kernel": (10, 5),
    }
    for k, shape in expected.items():
        assert flat[k].shape == shape, k
    # The original's initializers: cls and head kernel zero, head bias = head_bias_init.
    assert not flat["cls"].any() and not flat["head/kernel"].any() and not flat["head/bias"].any()
    biased = models.VisionTransformer(num_classes=5, head_bias_init=-3.0, **MODEL_CONFIGS["testing"])
    assert np.all(init(biased, np.zeros((1, 32, 32, 3)))["head"]["bias"] == -3.0)


def test_initializer_scales():
    """posemb ~ N(0, 0.02), MLP biases ~ N(0, 1e-6), xavier-uniform kernels."""
    cfg = tiny_config(hidden_size=64, transformer=dict(mlp_dim=256, num_heads=4, num_layers=1))
    p = init(models.VisionTransformer(num_classes=2, **cfg), np.zeros((1, 64, 64, 3)))
    assert np.std(p["Transformer"]["posembed_input"]["pos_embedding"]) == pytest.approx(0.02, rel=0.1)
    blk = p["Transformer"]["encoderblock_0"]
    assert np.std(blk["MlpBlock_0"]["Dense_0"]["bias"]) == pytest.approx(1e-6, rel=0.3)
    # xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); the q kernel is (64, 4, 16) -> 64x64.
    q = np.asarray(blk["MultiHeadDotProductAttention_0"]["query"]["kernel"])
    bound = np.sqrt(6 / (64 + 64))
    assert np.abs(q).max() <= bound and np.abs(q).max() > 0.9 * bound
    d0 = np.asarray(blk["MlpBlock_0"]["Dense_0"]["kernel"])
    assert np.abs(d0).max() <= np.sqrt(6 / (64 + 256))


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),
        tiny_config(classifier="gap", representation_size=8),
        hybrid_config(),
        hybrid_config(classifier="gap"),
    ],
    ids=["token", "gap-rep", "hybrid-token", "hybrid-gap"],
)
def test_matches_independent_numpy_forward(config):
    """Float32 Flax vs float64 NumPy written from the definitions: rel. error < 1e-5."""
    model = models.VisionTransformer(num_classes=7, **config)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 24, 3)).astype(np.float32)  # non-square
    p = perturb(init(model, x))
    ours = model.apply({"params": p}, x, train=False)
    ref = vit_forward(jax.tree.map(lambda a: np.asarray(a, np.float64), p), x, config)
    assert rel_err(ours, ref) < 1e-5


def test_gap_is_the_mean_of_the_normalised_tokens(images):
    model = models.VisionTransformer(num_classes=3, **tiny_config(classifier="gap", representation_size=None))
    p = perturb(init(model, images))
    logits, out = model.apply({"params": p}, images, return_intermediates=True)
    pooled = np.asarray(out["encoded"]).mean(axis=1)
    np.testing.assert_allclose(out["pre_logits"], pooled, rtol=1e-6)
    np.testing.assert_allclose(logits, pooled @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "classifier,shape",
    [("token", (2, 5)), ("gap", (2, 5)), ("map", (2, 5)), ("unpooled", (2, 16, 5)), ("token_unpooled", (2, 17, 5))],
)
def test_classifier_output_shapes(images, classifier, shape):
    model = models.VisionTransformer(num_classes=5, **tiny_config(classifier=classifier))
    p = init(model, images)
    assert ("cls" in p) == (classifier in ("token", "token_unpooled"))
    assert ("MAPHead" in p) == (classifier == "map")
    assert model.apply({"params": perturb(p)}, images).shape == shape


def test_map_head_attends_with_a_learned_probe(images):
    model = models.VisionTransformer(num_classes=5, **tiny_config(classifier="map"))
    p = init(model, images)
    assert p["MAPHead"]["probe"].shape == (1, 1, 32)
    # Permuting the tokens must not change an attention pool (no position inside the head).
    p = perturb(p)
    _, out = model.apply({"params": p}, images, return_intermediates=True)
    enc = out["encoded"]
    head = models_blocks.MAPHead(num_heads=4, mlp_dim=48)
    a = head.apply({"params": p["MAPHead"]}, enc)
    b = head.apply({"params": p["MAPHead"]}, enc[:, ::-1])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_relative_position_index_on_a_2x3_grid():
    # Patches in row-major order: p = (row, col). Offsets (dr, dc) shifted by (1, 2) into a 3x5 table.
    idx = models_posemb.relative_position_index(2, 3)
    assert idx.shape == (6, 6)
    coords = [(r, c) for r in range(2) for c in range(3)]
    for p, (r1, c1) in enumerate(coords):
        for q, (r2, c2) in enumerate(coords):
            assert idx[p, q] == (r1 - r2 + 1) * 5 + (c1 - c2 + 2)
    # Worked by hand: patch (0,0) vs (1,2): offset (-1,-2) -> table (0,0) -> 0; reverse -> (2,4) -> 14.
    assert idx[0, 5] == 0 and idx[5, 0] == 14 and idx[4, 4] == 7


def test_relative_bias_is_added_to_the_logits():
    """One block on a 2x3 grid: attention logits = qk/sqrt(d) + table[offset] (0 for cls)."""
    cfg = tiny_config(posemb="relative", transformer=dict(mlp_dim=8, num_heads=2, num_layers=1))
    model = models.VisionTransformer(num_classes=2, **cfg)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 8, 12, 3)).astype(np.float32)
    p = perturb(init(model, x), scale=0.3)
    assert "posembed_input" not in p["Transformer"]
    mha = p["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]
    table = np.asarray(mha["relative_bias"])
    assert table.shape == (3, 5, 2)
    _, out = model.apply({"params": p}, x, return_intermediates=True)
    # Recompute the logits from the block input and compare log-ratios of weights.
    tokens0 = np.asarray(model.apply({"params": p}, x, method=lambda m, x: _block_input(m, x)))
    ln = p["Transformer"]["encoderblock_0"]["LayerNorm_0"]
    h = tokens0 - tokens0.mean(-1, keepdims=True)
    h = h / np.sqrt((h**2).mean(-1, keepdims=True) + 1e-6) * ln["scale"] + ln["bias"]
    q = np.einsum("btd,dhk->bthk", h, mha["query"]["kernel"]) + mha["query"]["bias"]
    k = np.einsum("btd,dhk->bthk", h, mha["key"]["kernel"]) + mha["key"]["bias"]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(16)
    coords = [(r, c) for r in range(2) for c in range(3)]
    for qi, (r1, c1) in enumerate(coords):
        for ki, (r2, c2) in enumerate(coords):
            logits[:, :, qi + 1, ki + 1] += table[r1 - r2 + 1, c1 - c2 + 2]
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(out["attention"][0], expected, rtol=1e-4, atol=1e-6)


def _block_input(module, x):
    """Tokens entering block 0 (after the embedding, cls and dropout-free posemb stage)."""
    p = module.variables["params"]
    emb = jax.lax.conv_general_dilated(
        x, p["embedding"]["kernel"], (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    emb = (emb + p["embedding"]["bias"]).reshape(x.shape[0], -1, emb.shape[-1])
    cls = jnp.broadcast_to(p["cls"], (x.shape[0], 1, emb.shape[-1]))
    return jnp.concatenate([cls, emb], axis=1)


def test_learn_2d_concatenates_row_and_column_embeddings():
    cfg = tiny_config(posemb="learn_2d", transformer=dict(mlp_dim=8, num_heads=2, num_layers=1))
    model = models.VisionTransformer(num_classes=2, **cfg)
    x = np.zeros((1, 8, 12, 3), np.float32)
    p = perturb(init(model, x), scale=0.5)
    pe = p["Transformer"]["posembed_input"]
    assert pe["row_embedding"].shape == (2, 16) and pe["col_embedding"].shape == (3, 16)
    layer = models_posemb.AddPositionEmbs2D(grid_shape=(2, 3), num_prefix_tokens=1)
    tokens = np.zeros((1, 7, 32), np.float32)
    added = np.asarray(layer.apply({"params": pe}, tokens))
    assert not added[0, 0].any()  # the cls token gets no embedding
    for r in range(2):
        for c in range(3):
            expected = np.concatenate([pe["row_embedding"][r], pe["col_embedding"][c]])
            np.testing.assert_array_equal(added[0, 1 + r * 3 + c], expected)


def test_sincos2d_embedding_values():
    pe = models_posemb.posemb_sincos_2d(2, 3, 8)
    assert pe.shape == (6, 8)
    # width 8 -> 2 frequencies: 1 and 1/100. Patch (row 1, col 2) is index 5.
    x, y = 2.0, 1.0
    expected = [
        np.sin(x),
        np.sin(x / 100),
        np.cos(x),
        np.cos(x / 100),
        np.sin(y),
        np.sin(y / 100),
        np.cos(y),
        np.cos(y / 100),
    ]
    np.testing.assert_allclose(pe[5], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        models_posemb.posemb_sincos_2d(2, 2, 6)


@pytest.mark.parametrize("posemb", ["none", "sincos2d", "learn_2d", "relative"])
def test_posemb_variants_run_and_have_no_1d_table(images, posemb):
    model = models.VisionTransformer(num_classes=3, **tiny_config(posemb=posemb))
    p = init(model, images)
    assert "pos_embedding" not in p["Transformer"].get("posembed_input", {})
    assert np.isfinite(model.apply({"params": perturb(p)}, images)).all()


def test_posemb_none_is_permutation_equivariant_over_patches():
    """Without position information a GAP model cannot tell patch order apart."""
    cfg = tiny_config(posemb="none", classifier="gap", patches={"size": (4, 4)})
    model = models.VisionTransformer(num_classes=3, **cfg)
    x = np.random.default_rng(5).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    swapped = x.copy()
    swapped[:, :4, :4], swapped[:, 4:, 4:] = x[:, 4:, 4:], x[:, :4, :4]
    p = perturb(init(model, x))
    np.testing.assert_allclose(model.apply({"params": p}, x), model.apply({"params": p}, swapped), rtol=1e-5, atol=1e-6)
    learned = models.VisionTransformer(num_classes=3, **tiny_config(classifier="gap"))
    q = perturb(init(learned, x))
    assert not np.allclose(learned.apply({"params": q}, x), learned.apply({"params": q}, swapped), atol=1e-4)


def test_non_square_grid_and_patches():
    model = models.VisionTransformer(num_classes=3, **tiny_config(patches={"size": (4, 2)}))
    x = np.zeros((2, 8, 12, 3), np.float32)
    p = init(model, x)
    assert p["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 2 * 6, 32)
    assert models.grid_shape(tiny_config(patches={"size": (4, 2)}), (8, 12)) == (2, 6)


def test_patch_size_must_divide_the_image():
    model = models.VisionTransformer(num_classes=3, **tiny_config())
    with pytest.raises(ValueError, match=r"patch size 4x4 does not divide the image size 18x16"):
        model.init(jax.random.PRNGKey(0), np.zeros((1, 18, 16, 3)), train=False)


def test_num_heads_must_divide_hidden_size():
    cfg = tiny_config(transformer=dict(mlp_dim=8, num_heads=5, num_layers=1))
    with pytest.raises(ValueError, match="num_heads=5 does not divide hidden_size=32"):
        models.VisionTransformer(num_classes=3, **cfg).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("classifier", "cls", "classifier='cls': choose one of token, gap"),
        ("posemb", "2d", "posemb='2d': choose one of learn"),
        ("remat", "some", "remat='some': choose one of none, full, dots"),
    ],
)
def test_unknown_options_are_named(images, field, value, message):
    model = models.VisionTransformer(num_classes=3, **tiny_config(**{field: value}))
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.PRNGKey(0), images)


def test_hybrid_stride():
    """Root conv /2 and max-pool /2, then /2 per stage after the first: R50 (3 stages) -> /16."""
    assert models.grid_shape(MODEL_CONFIGS["R50+ViT-B_16"], (224, 224)) == (14, 14)
    assert models.grid_shape(MODEL_CONFIGS["R26+ViT-B_32"], (224, 224)) == (7, 7)
    assert models.grid_shape(MODEL_CONFIGS["R+ViT-Ti_16"], (224, 224)) == (7, 7)
    # Tiny hybrid: 2 stages -> stride 8 -> a 32x24 image gives a 4x3 grid.
    model = models.VisionTransformer(num_classes=2, **hybrid_config())
    p = init(model, np.zeros((1, 32, 24, 3), np.float32))
    assert p["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 12, 32)
    _, out = model.apply({"params": p}, np.zeros((1, 32, 24, 3)), return_intermediates=True)
    assert out["attention"].shape == (2, 1, 4, 13, 13)
    assert p["block2"]["unit1"]["gn3"]["scale"].shape == (256,) and not p["block2"]["unit1"]["gn3"]["scale"].any()


def test_intermediates_shapes_and_free_when_not_requested(images):
    model = models.VisionTransformer(num_classes=3, **tiny_config())
    p = perturb(init(model, images))
    plain = model.apply({"params": p}, images)
    logits, out = model.apply({"params": p}, images, return_intermediates=True)
    np.testing.assert_array_equal(plain, logits)
    assert out["attention"].shape == (2, 2, 4, 17, 17)
    assert out["tokens"].shape == (2, 2, 17, 32)
    np.testing.assert_allclose(np.asarray(out["attention"]).sum(-1), 1.0, rtol=1e-5)
    # Without the request the compiled program computes no extra outputs.
    lowered = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(p, images)
    assert len(jax.tree.leaves(lowered.out_info)) == 1


def _stack_like(params):
    return checkpoint.stack_blocks(jax.tree.map(np.asarray, params))


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_remat_match_the_plain_model(images, remat):
    cfg = tiny_config(transformer=dict(mlp_dim=48, num_heads=4, num_layers=3, dropout_rate=0.0))
    plain = models.VisionTransformer(num_classes=3, **cfg)
    p = perturb(init(plain, images))
    labels = jax.nn.one_hot(np.array([0, 2]), 3)

    def loss(model, params):
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(model.apply({"params": params}, images)) * labels, -1))

    ref_loss, ref_grad = jax.value_and_grad(lambda q: loss(plain, q))(p)
    for scan in (False, True):
        model = models.VisionTransformer(num_classes=3, remat=remat, scan=scan, **cfg)
        q = _stack_like(p) if scan else p
        assert jax.tree.structure(q) == jax.tree.structure(init(model, images))
        value, grad = jax.value_and_grad(lambda q, m=model: loss(m, q))(q)
        assert value == pytest.approx(float(ref_loss), rel=1e-6)
        if scan:
            grad = checkpoint.unstack_blocks(grad)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
            # float32 reduction order differs between layouts: ~1e-7 absolute.
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    _, out = models.VisionTransformer(num_classes=3, scan=True, **cfg).apply(
        {"params": _stack_like(p)}, images, return_intermediates=True
    )
    _, ref_out = plain.apply({"params": p}, images, return_intermediates=True)
    np.testing.assert_allclose(out["attention"], ref_out["attention"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("posemb", ["learn", "relative"])
def test_attention_formulations_agree(images, posemb):
    """fused (default on CPU), einsum (Flax's) and jax.nn.dot_product_attention: same function."""
    cfg = tiny_config(posemb=posemb, classifier="map")
    ref_model = models.VisionTransformer(num_classes=3, attention_impl="einsum", **cfg)
    p = perturb(init(ref_model, images))
    f = lambda m: jax.value_and_grad(lambda q: m.apply({"params": q}, images).sum())(p)  # noqa: E731
    ref_value, ref_grad = f(ref_model)
    for impl in ("fused", "dot_product_attention"):
        value, grad = f(models.VisionTransformer(num_classes=3, attention_impl=impl, **cfg))
        assert float(value) == pytest.approx(float(ref_value), rel=1e-5)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize(
    "dtype,head_dim,bias,backend,capability,kernel",
    [
        ("bfloat16", 64, False, "gpu", "9.0", "cudnn"),  # ViT-B/16 on an H100
        ("float16", 128, False, "gpu", "8.0", "cudnn"),
        ("float32", 64, False, "gpu", "9.0", None),  # cuDNN's flash kernel takes half precision only
        ("bfloat16", 80, False, "gpu", "9.0", "cudnn"),  # ViT-H/14: 1280 / 16
        ("bfloat16", 160, False, "gpu", "9.0", None),  # past the backward pass's head size
        ("bfloat16", 36, False, "gpu", "9.0", None),  # not a multiple of 8
        ("bfloat16", 64, True, "gpu", "9.0", None),  # the relative position bias
        ("bfloat16", 64, False, "gpu", "7.0", None),  # before Ampere
        ("bfloat16", 64, False, "cpu", None, None),
        ("bfloat16", 64, False, "tpu", None, None),
    ],
)
def test_attention_kernel_takes_cudnn_exactly_where_it_applies(dtype, head_dim, bias, backend, capability, kernel):
    from vit_jax.models_attention import attention_kernel, resolve_attention_impl

    assert attention_kernel(jnp.dtype(dtype), head_dim, bias, backend, capability) == kernel
    assert resolve_attention_impl("auto") == "fused"  # this CPU host; a GPU resolves to dot_product_attention


def test_bfloat16_compute_with_float32_params(images):
    cfg = tiny_config()
    f32 = models.VisionTransformer(num_classes=3, **cfg)
    bf16 = models.VisionTransformer(num_classes=3, dtype=jnp.bfloat16, **cfg)
    p = perturb(init(f32, images))
    # Jitted: op by op, bfloat16's many small programs take seconds each to compile on CPU.
    bf16_params = jax.jit(lambda: bf16.init(jax.random.PRNGKey(0), images, train=False)["params"])()
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf16_params))
    logits, out = jax.jit(lambda q: bf16.apply({"params": q}, images, return_intermediates=True))(p)
    assert logits.dtype == jnp.bfloat16 and out["tokens"].dtype == jnp.bfloat16
    assert rel_err(logits, f32.apply({"params": p}, images)) < 3e-2
    grads = jax.jit(jax.grad(lambda q: bf16.apply({"params": q}, images).astype(jnp.float32).sum()))(p)
    assert all(g.dtype == jnp.float32 and np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_bfloat16_hybrid_and_param_dtype():
    x = np.zeros((1, 16, 16, 3), np.float32)
    model = models.VisionTransformer(num_classes=2, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, **hybrid_config())
    p = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x, train=False)["params"])()  # jitted, as above
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(p))
    assert jax.jit(lambda q: model.apply({"params": q}, x))(p).dtype == jnp.bfloat16


def test_droppath_only_in_training(images):
    cfg = tiny_config(
        transformer=dict(mlp_dim=48, num_heads=4, num_layers=4, dropout_rate=0.0, attention_dropout_rate=0.0)
    )
    plain = models.VisionTransformer(num_classes=3, **cfg)
    sd = models.VisionTransformer(num_classes=3, droppath_rate=0.5, **cfg)
    p = perturb(init(plain, images))
    np.testing.assert_array_equal(sd.apply({"params": p}, images), plain.apply({"params": p}, images))
    rngs = lambda s: {"dropout": jax.random.PRNGKey(s)}  # noqa: E731
    a = sd.apply({"params": p}, images, train=True, rngs=rngs(0))
    b = sd.apply({"params": p}, images, train=True, rngs=rngs(1))
    assert not np.allclose(a, b)
    # Dropping a whole branch for a sample: per-sample outputs either equal the
    # deterministic branch or differ; the first block has rate 0 (linear schedule).
    _, out = sd.apply({"params": p}, images, train=True, rngs=rngs(0), return_intermediates=True)
    _, ref = plain.apply({"params": p}, images, return_intermediates=True)
    np.testing.assert_allclose(out["tokens"][0], ref["tokens"][0], rtol=1e-6)


def test_droppath_drops_whole_samples():
    x = jnp.ones((1000, 3, 4))
    y = models_blocks.drop_path(x, 0.25, jax.random.PRNGKey(0))
    per_sample = np.asarray(y[:, 0, 0])
    assert set(np.unique(per_sample)).issubset({0.0, np.float32(1 / 0.75)})
    assert np.all(np.asarray(y) == per_sample[:, None, None])
    assert 0.2 < np.mean(per_sample == 0) < 0.3


def test_patch_dropout_keeps_a_random_subset_of_the_patch_tokens():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 13, 2)), jnp.float32)  # 1 prefix + 12 patches
    y = np.asarray(models_blocks.patch_dropout(x, 0.25, 1, jax.random.PRNGKey(0)))
    assert y.shape == (3, 1 + 9, 2)
    np.testing.assert_array_equal(y[:, 0], np.asarray(x[:, 0]))  # the cls token is never dropped
    kept = []
    for b in range(3):
        rows = [int(np.flatnonzero((np.asarray(x[b, 1:]) == t).all(-1))[0]) for t in y[b, 1:]]
        assert len(set(rows)) == 9  # distinct tokens of this example, copied unchanged
        kept.append(frozenset(rows))
    assert len(set(kept)) > 1  # each example draws its own subset
    # Every patch is kept with probability 3/4 over many keys.
    counts = np.zeros(12)
    for k in range(400):
        z = np.asarray(models_blocks.patch_dropout(x[:1], 0.25, 1, jax.random.PRNGKey(k)))
        counts += [(z[0, 1:] == np.asarray(x[0, 1 + i])).all(-1).any() for i in range(12)]
    assert np.all(np.abs(counts / 400 - 0.75) < 0.08), counts / 400


def test_patch_dropout_is_the_model_on_the_kept_patches_alone():
    """Without position embeddings the cls token cannot tell where a patch was, so a model that keeps
    4 of 16 patches must give the logits of the plain model on some 2x2 image of 4 of those patches."""
    cfg = tiny_config(posemb="none")
    plain = models.VisionTransformer(num_classes=3, **cfg)
    dropping = models.VisionTransformer(num_classes=3, patch_drop_rate=0.75, **cfg)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    p = perturb(init(plain, x))
    np.testing.assert_array_equal(dropping.apply({"params": p}, x), plain.apply({"params": p}, x))  # not in eval
    key = {"dropout": jax.random.PRNGKey(4)}
    logits = np.asarray(dropping.apply({"params": p}, x, train=True, rngs=key))
    _, out = dropping.apply({"params": p}, x, train=True, rngs=key, return_intermediates=True)
    assert out["tokens"].shape[2] == 1 + 4
    patches = x.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 4, 4, 3)
    subsets = np.array(list(itertools.combinations(range(16), 4)))  # 1,820 ways to keep 4
    for b in range(2):
        tiles = patches[b][subsets]  # (1820, 4, 4, 4, 3) -> 2x2 images of 8x8
        small = tiles.reshape(-1, 2, 2, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 8, 8, 3)
        every = np.asarray(jax.jit(lambda q, v: plain.apply({"params": q}, v))(p, small))
        close = np.flatnonzero(np.abs(every - logits[b]).max(-1) < 1e-5)
        assert len(close) == 1, close  # exactly one subset of 4 patches gives these logits


def test_patch_dropout_needs_the_grid_free_position_embeddings(images):
    model = models.VisionTransformer(num_classes=3, patch_drop_rate=0.5, **tiny_config(posemb="relative"))
    with pytest.raises(ValueError, match="patch_drop_rate with posemb='relative'"):
        model.init(jax.random.PRNGKey(0), images)
    bad = models.VisionTransformer(num_classes=3, patch_drop_rate=1.0, **tiny_config())
    with pytest.raises(ValueError, match="patch_drop_rate=1.0: use a rate from 0 up to"):
        bad.init(jax.random.PRNGKey(0), images)


def test_dropout_keys_differ_per_call(images):
    cfg = tiny_config(transformer=dict(mlp_dim=48, num_heads=4, num_layers=2, dropout_rate=0.3))
    model = models.VisionTransformer(num_classes=3, **cfg)
    p = perturb(init(model, images))
    a = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    b = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.PRNGKey(0)})
    c = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
