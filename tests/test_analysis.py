"""Analysis tests with answers known by construction, and the analyze / predict tools."""

import itertools
import json
import os

import jax
import numpy as np
import pytest
from conftest import hybrid_config, perturb, tiny_config, tiny_run_config
from PIL import Image

from vit_jax import analysis, analyze, checkpoint, models, predict, train
from vit_jax.configs.models import MODEL_CONFIGS


def centre_distance_loop(gh, gw, ph, pw):
    """Mean over query patches of the mean distance to all key patches, by explicit loops."""
    cells = [(r, c) for r in range(gh) for c in range(gw)]
    total = 0.0
    for (r1, c1), (r2, c2) in itertools.product(cells, cells):
        total += np.hypot((r1 - r2) * ph, (c1 - c2) * pw)
    return total / len(cells) ** 2


def test_identity_attention_has_distance_zero():
    n = 9
    attn = np.broadcast_to(np.eye(n), (2, 3, 4, n, n))  # layers, batch, heads
    np.testing.assert_array_equal(analysis.attention_distance_from_weights(attn, (3, 3), 16), np.zeros((2, 4)))


@pytest.mark.parametrize("grid,patch", [((4, 4), (16, 16)), ((2, 3), (2, 5))])
def test_uniform_attention_gives_the_mean_pairwise_centre_distance(grid, patch):
    n = grid[0] * grid[1]
    attn = np.full((1, 2, 1, n, n), 1.0 / n)
    got = analysis.attention_distance_from_weights(attn, grid, patch)
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(centre_distance_loop(*grid, *patch), rel=1e-12)


def test_prefix_tokens_are_left_out_and_weights_not_renormalised():
    n = 4  # 2x2 grid, cls first; every patch query gives half its weight to cls
    attn = np.zeros((1, 1, 1, n + 1, n + 1))
    attn[..., :, 0] = 0.5
    attn[..., :, 1:] = 0.5 / n
    attn[..., 0, :] = 0.0
    attn[..., 0, 4] = 1.0  # the cls query's row must not count
    got = analysis.attention_distance_from_weights(attn, (2, 2), 10, num_prefix_tokens=1)
    assert got[0, 0] == pytest.approx(0.5 * centre_distance_loop(2, 2, 10, 10))


def test_two_layer_rollout_by_hand():
    # One image, one head, cls + 2 patches.
    a1 = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
    a2 = np.array([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    attn = np.stack([a1, a2])[:, None, None]  # (layers, B, heads, T, T)
    # (A + I) / 2 row-normalised, then R = A2' A1'.
    b1 = np.array([[0.75, 0.125, 0.125], [0.0, 1.0, 0.0], [0.0, 0.25, 0.75]])
    b2 = np.array([[0.5, 0.0, 0.5], [0.25, 0.75, 0.0], [0.5, 0.0, 0.5]])
    r = b2 @ b1
    # Row 0 of r worked out: 0.5*b1[0] + 0.5*b1[2] = [0.375, 0.1875, 0.4375].
    np.testing.assert_allclose(r[0], [0.375, 0.1875, 0.4375])
    np.testing.assert_allclose(analysis.rollout_from_weights(attn, 1), [[0.1875, 0.4375]])
    # Without a cls token: the mean over query rows of the patch block.
    np.testing.assert_allclose(analysis.rollout_from_weights(attn, 0), [r.mean(axis=0)])


def test_sincos_similarity_is_symmetric_with_ones_on_the_diagonal():
    params = {"embedding": {"kernel": np.zeros((4, 4, 3, 32))}}
    sim = analysis.posemb_similarity(params, (3, 5), posemb="sincos2d")
    flat = sim.reshape(15, 15)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(flat), 1.0, atol=1e-12)
    assert np.all(flat < 1.0 + 1e-12)
    # Nearer patches are more similar than far ones along a row.
    assert sim[1, 2, 1, 3] > sim[1, 2, 1, 4]


def test_learned_posemb_similarity_skips_the_cls_row():
    table = np.zeros((1, 5, 4), np.float32)
    table[0, 0] = 7.0  # cls row
    table[0, 1:] = np.eye(4)  # orthonormal patch embeddings
    sim = analysis.posemb_similarity({"Transformer": {"posembed_input": {"pos_embedding": table}}}, (2, 2))
    np.testing.assert_allclose(sim.reshape(4, 4), np.eye(4))
    with pytest.raises(ValueError, match="no position embedding table"):
        analysis.posemb_similarity({"Transformer": {}}, (2, 2))


def test_embedding_filters_recover_the_principal_directions():
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.normal(size=(2 * 2 * 3, 2)))[0].T  # two orthonormal directions
    coeffs = rng.normal(size=(64, 2)) * np.array([3.0, 1.0])
    kernel = (coeffs @ u).T.reshape(2, 2, 3, 64)
    components, explained = analysis.embedding_filters({"embedding": {"kernel": kernel}}, k=3)
    assert components.shape == (3, 2, 2, 3)
    assert explained[:2].sum() == pytest.approx(1.0) and explained[0] > explained[1]
    top = components[0].reshape(-1)
    assert abs(top @ u[0]) == pytest.approx(1.0, abs=0.05)


def test_model_attention_distance_matches_the_weights_route(images):
    model = models.VisionTransformer(num_classes=3, **tiny_config())
    params = perturb(model.init(jax.random.PRNGKey(0), images[:1])["params"])
    x = np.concatenate([images, images[::-1] * 0.5])
    got = analysis.mean_attention_distance(model, params, x, batch_size=3)
    _, out = model.apply({"params": params}, x, return_intermediates=True)
    expected = analysis.attention_distance_from_weights(out["attention"], (4, 4), 4, 1)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Between the two extremes: at most the largest centre distance.
    assert np.all(got > 0) and np.all(got < np.hypot(12, 12))


def test_hybrid_tokens_are_measured_in_input_pixels():
    model = models.VisionTransformer(num_classes=2, **hybrid_config())
    assert analysis.token_grid(model, (32, 24)) == ((4, 3), (8.0, 8.0))
    assert analysis.token_grid(models.get_model("R50+ViT-B_16", num_classes=2), (224, 224))[1] == (16.0, 16.0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train.train_and_evaluate(tiny_run_config(total_steps=30), str(workdir))
    return workdir


def test_analyze_a_trained_run(trained_run):
    assert analyze.main(["--workdir", str(trained_run), "--num_images", "24"]) == 0
    out = trained_run / "analysis"
    for name in ("mean_attention_distance.png", "attention_maps.png", "posemb_similarity.png", "embedding_filters.png"):
        assert (out / name).stat().st_size > 1000, name
    result = json.loads((out / "analysis.json").read_text())
    dist = np.array(result["mean_attention_distance"])
    assert dist.shape == (1, 2) and np.isfinite(dist).all() and result["grid_shape"] == [4, 4]
    assert np.array(result["posemb_similarity"]).shape == (4, 4, 4, 4)


def write_png(path, value, size=8):
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def test_predict_reports_bad_files_and_predicts_the_rest(trained_run, tmp_path, capsys):
    write_png(tmp_path / "a.png", 200)
    write_png(tmp_path / "b.png", 10)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    files = [str(tmp_path / n) for n in ("a.png", "bad.png", "b.png")]
    assert predict.main(["--workdir", str(trained_run), "--json", *files]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["image"] for r in lines] == [files[0], files[2]]
    for r in lines:
        assert len(r["top"]) == 5 and r["top"][0]["probability"] >= r["top"][1]["probability"]
        assert sum(t["probability"] for t in r["top"]) <= 1.0 + 1e-6
        assert r["top"][0]["name"] == str(r["top"][0]["class"])  # digits: names are "0".."9"
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.png" in errors[0]


def test_analyze_and_predict_from_an_original_checkpoint(tmp_path, capsys):
    model = models.VisionTransformer(num_classes=3, **MODEL_CONFIGS["testing"])
    params = perturb(model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))["params"])
    checkpoint.save(params, tmp_path / "testing.npz")
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), np.uint8)).save(
            tmp_path / "imgs" / f"{i}.jpg"
        )
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    args = ["--checkpoint", str(tmp_path / "testing.npz"), "--model", "testing", "--image_size", "32"]
    assert analyze.main([*args, "--images", str(tmp_path / "imgs"), "--outdir", str(tmp_path / "out")]) == 0
    assert len(os.listdir(tmp_path / "out")) == 5
    capsys.readouterr()
    assert predict.main([*args, "--labels", str(tmp_path / "labels.txt"), str(tmp_path / "imgs" / "0.jpg")]) == 0
    assert {"cat", "dog", "bird"} & set(capsys.readouterr().out.split())
    assert predict.main(["--checkpoint", str(tmp_path / "testing.npz"), "--model", "ViT-B_16", "x.png"]) == 2
    assert "does not fit ViT-B_16" in capsys.readouterr().err
