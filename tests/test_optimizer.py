"""The optimizer's options against hand-written tables and independent computations: layer-wise
learning-rate decay, AugReg's decoupled weight decay of kernels, and the moving average."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_run_config

from vit_jax import checkpoint, input_pipeline, models, optimizer, parallel, train
from vit_jax import config as config_lib


def _params(**model):
    kw = dict(
        hidden_size=8,
        patches={"size": (4, 4)},
        transformer={"mlp_dim": 16, "num_heads": 2, "num_layers": 3, "dropout_rate": 0.0},
        classifier="token",
        representation_size=None,
    )
    kw.update(model)
    m = models.VisionTransformer(num_classes=5, **kw)
    return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False))["params"]


def test_layer_decay_rates_follow_a_hand_written_table():
    d = 0.5  # 3 blocks: embeddings d**4, block i d**(3 - i), everything after the encoder 1
    table = {
        "embedding/kernel": 0.0625,
        "embedding/bias": 0.0625,
        "cls": 0.0625,
        "Transformer/posembed_input/pos_embedding": 0.0625,
        "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel": 0.125,
        "Transformer/encoderblock_1/LayerNorm_0/scale": 0.25,
        "Transformer/encoderblock_2/MultiHeadDotProductAttention_0/query/kernel": 0.5,
        "Transformer/encoder_norm/scale": 1.0,
        "head/kernel": 1.0,
        "head/bias": 1.0,
    }
    scales = checkpoint.flatten(optimizer.layer_scales(_params(), d, 3))
    for name, want in table.items():
        assert float(scales[name]) == want, name
    assert set(np.unique([float(v) for v in scales.values()])) == {0.0625, 0.125, 0.25, 0.5, 1.0}


def test_layer_decay_of_a_hybrid_stem_and_of_scanned_blocks():
    d = 0.5
    hybrid = checkpoint.flatten(
        optimizer.layer_scales(_params(resnet={"num_layers": (), "width_factor": 0.5}, representation_size=4), d, 3)
    )
    assert float(hybrid["conv_root/kernel"]) == float(hybrid["gn_root/scale"]) == 0.0625
    assert float(hybrid["pre_logits/kernel"]) == 1.0
    scanned = checkpoint.flatten(optimizer.layer_scales(_params(scan=True), d, 3))
    rates = scanned["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"]
    assert rates.shape == (3, 1, 1) and rates.ravel().tolist() == [0.125, 0.25, 0.5]


def _sgd_config(**over):
    c = tiny_run_config(
        **{"optim.name": "sgd", "optim.momentum": 0.0, "lr.warmup_steps": 0, "lr.decay": "constant"}, **over
    )
    c.grad_clip_norm = 0.0
    c.lr.base = 0.1
    return c


def _grads_like(params, seed=0):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(size=p.shape), jnp.float32) for p in leaves])


def test_layer_decay_scales_each_sgd_step_by_its_rate():
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), _params())
    grads = _grads_like(params)
    tx, _ = optimizer.make_optimizer(_sgd_config(**{"optim.layer_decay": 0.5}), 10, num_layers=3)
    updates, _ = tx.update(grads, tx.init(params), params)
    scales = optimizer.layer_scales(params, 0.5, 3)
    want = jax.tree.map(lambda g, s: -0.1 * s * np.asarray(g), grads, scales)
    jax.tree.map(lambda u, w: np.testing.assert_allclose(u, w, rtol=1e-6), updates, want)


def test_augreg_weight_decay_is_optax_adamw_on_kernels_only():
    """Over three steps of a cosine schedule: Adam with AugReg's decoupled decay of kernels
    equals optax's own adamw given the mask `name ends in /kernel`."""
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), _params())
    c = tiny_run_config(**{"optim.weight_decay": 0.1, "optim.wd_convention": "augreg", "lr.warmup_steps": 0})
    c.grad_clip_norm = 0.0
    ours, schedule = optimizer.make_optimizer(c, 3)
    mask = jax.tree_util.tree_map_with_path(lambda p, _: parallel.path_name(p).endswith("/kernel"), params)
    reference = optax.adamw(schedule, weight_decay=0.1, mask=mask)
    pa, pb, sa, sb = params, params, ours.init(params), reference.init(params)
    for step in range(3):
        g = _grads_like(params, step)
        ua, sa = ours.update(g, sa, pa)
        ub, sb = reference.update(g, sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), pa, pb)
    # With zero gradients only the decay moves: kernels alone under "augreg", every matrix
    # (cls and the position embedding too) under "optax".
    zeros = jax.tree.map(jnp.zeros_like, params)
    lr0 = float(schedule(0))
    u_augreg, _ = ours.update(zeros, ours.init(params), params)
    c.optim.wd_convention = "optax"
    default, _ = optimizer.make_optimizer(c, 3)
    u_optax, _ = default.update(zeros, default.init(params), params)
    for u, decayed in ((u_augreg, ("head/kernel",)), (u_optax, ("head/kernel", "cls"))):
        flat = checkpoint.flatten(u)
        for name in ("head/kernel", "head/bias", "cls"):
            want = -lr0 * 0.1 * 0.5 if name in decayed else 0.0
            np.testing.assert_allclose(flat[name], want, rtol=1e-6, atol=1e-9)


def test_augreg_weight_decay_with_sgd_by_hand():
    params = jax.tree.map(lambda s: jnp.full(s.shape, 2.0, s.dtype), _params())
    grads = _grads_like(params)
    tx, _ = optimizer.make_optimizer(_sgd_config(**{"optim.weight_decay": 0.3, "optim.wd_convention": "augreg"}), 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat_u, flat_g = checkpoint.flatten(updates), checkpoint.flatten(grads)
    for name, u in flat_u.items():
        decay = 0.3 * 0.1 * 2.0 if name.endswith("/kernel") else 0.0  # wd * lr * p
        np.testing.assert_allclose(u, -0.1 * np.asarray(flat_g[name]) - decay, rtol=1e-6, atol=1e-7)


def test_full_token_steps_on_their_own_schedule_by_hand():
    """40 steps, warm-up 5 to lr 1e-2 and cosine over the 25 steps before the last 10, which
    restart at 1e-3 and decay by cosine to 0; without full_token_lr the run's one schedule."""
    half_cos = lambda base, t, n: base * 0.5 * (1 + math.cos(math.pi * t / n))  # noqa: E731
    expected = {0: 0.0, 3: 6e-3, 5: 1e-2, 17: half_cos(1e-2, 12, 25), 29: half_cos(1e-2, 24, 25)}
    expected.update({30: 1e-3, 35: 5e-4, 39: half_cos(1e-3, 9, 10)})
    c = tiny_run_config(**{"model.patch_drop_rate": 0.5, "full_token_steps": 10, "full_token_lr": 1e-3})
    _, schedule = optimizer.make_optimizer(c, 40)
    for count, lr in expected.items():
        assert float(schedule(count)) == pytest.approx(lr, rel=1e-5, abs=1e-12), count
    c.full_token_lr = 0.0
    _, run_schedule = optimizer.make_optimizer(c, 40)
    assert float(run_schedule(30)) == pytest.approx(half_cos(1e-2, 25, 35), rel=1e-5)


def test_ema_rates_by_hand():
    assert [float(optimizer.ema_decay_at(t, 0.8, False)) for t in (0, 5, 100)] == pytest.approx([0.8] * 3)
    assert [float(optimizer.ema_decay_at(t, 0.8, True)) for t in (0, 1, 35, 100)] == pytest.approx(
        [0.1, 2 / 11, 0.8, 0.8]  # (1 + t) / (10 + t) until it reaches 0.8 at t = 35
    )


def test_ema_of_a_run_equals_the_recurrence_by_hand():
    """Three real train steps with the warm-up (so each step has its own rate): state['ema']
    against the average of the recorded parameters worked out in float64."""
    config = config_lib.resolve(tiny_run_config(ema_decay=0.8, ema_warmup=True))
    source = input_pipeline.get_source(config, "train")
    prog = train.build(config, source.num_classes, 10)
    state = prog.init_state(jax.random.PRNGKey(0))
    history = [parallel.to_host(state["params"])]
    assert jax.tree.all(jax.tree.map(np.array_equal, parallel.to_host(state["ema"]), history[0]))
    batches = source.train_batches(batch=32, seed=0, start_step=0, process_index=0, process_count=1, rows=None)
    rng = jax.random.PRNGKey(1)
    for _ in range(3):
        state, _ = prog.train_step(state, parallel.global_batch(next(batches), prog.data_sharding), rng)
        history.append(parallel.to_host(state["params"]))
    rates = [0.1, 2 / 11, 0.25]  # (1 + t) / (10 + t) for t = 0, 1, 2
    want = jax.tree.map(lambda p: np.asarray(p, np.float64), history[0])
    for d, p in zip(rates, history[1:], strict=True):
        want = jax.tree.map(lambda e, q, d=d: d * e + (1 - d) * np.asarray(q, np.float64), want, p)
    ema = parallel.to_host(state["ema"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ema, want)
    assert not np.array_equal(history[-1]["head"]["kernel"], ema["head"]["kernel"])
