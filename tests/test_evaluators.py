"""Evaluators on frozen features, each checked against an answer reached another way: the
sampling against a literal and a differently written loop, the closed form against a direct
float64 solve of the regularised normal equations, kNN against a per-example loop, the linear
probe against scikit-learn."""

import numpy as np
import pytest

from vit_jax import evaluators


def _blobs(seed, n_train, n_test, dim, num_classes, spread):
    """Train and test sets of Gaussian classes around shared random centres; a larger
    `spread` overlaps the classes more."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))

    def draw(n):
        y = rng.integers(0, num_classes, size=n)
        return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y

    return (*draw(n_train), *draw(n_test))


# ----------------------------------------------------------------------------- sampling


def test_sample_shots_literal():
    # Class members, ascending: 0 -> [1, 4, 5, 9], 1 -> [0, 3, 7], 2 -> [2, 6, 8].
    # One default_rng(0) permutes them in class order: [5, 1, 4, 9], [7, 3, 0], [8, 2, 6].
    labels = np.array([1, 0, 2, 1, 0, 0, 2, 1, 2, 0])
    np.testing.assert_array_equal(evaluators.sample_shots(labels, 3, 2, seed=0), [5, 1, 7, 3, 8, 2])
    # Four shots: classes 1 and 2 have only three members and give all of them.
    np.testing.assert_array_equal(evaluators.sample_shots(labels, 3, 4, seed=0), [5, 1, 4, 9, 7, 3, 0, 8, 2, 6])
    assert evaluators.sample_shots(labels, 3, 0, seed=0).shape == (0,)


def _reference_shots(labels, num_classes, shots, seed):
    """The same draw written another way: a permutation of positions, not of the indices."""
    gen = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        members = [i for i, label in enumerate(labels.tolist()) if label == c]
        order = gen.permutation(len(members))
        out.extend(members[j] for j in order[: min(shots, len(members))])
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("shots", [1, 5, 25])
def test_sample_shots_matches_loop(seed, shots):
    rng = np.random.default_rng(123)
    labels = rng.integers(0, 5, size=300)
    labels[labels == 3] = 4  # class 3 absent
    labels[:4] = 5  # class 5 has four members, fewer than 5 or 25
    got = evaluators.sample_shots(labels, 6, shots, seed)
    assert got.tolist() == _reference_shots(labels, 6, shots, seed)
    # Class order, per-class counts, no repeats.
    assert np.all(np.diff(labels[got]) >= 0)
    assert len(set(got.tolist())) == len(got)
    counts = np.bincount(labels[got], minlength=6)
    assert counts[3] == 0 and counts[5] == min(shots, 4)


def test_sample_shots_nested_across_shot_counts():
    # big_vision permutes once per seed and slices for each shot count: fewer shots are a prefix.
    labels = np.random.default_rng(5).integers(0, 4, size=200)
    one = evaluators.sample_shots(labels, 4, 1, seed=3)
    five = evaluators.sample_shots(labels, 4, 5, seed=3)
    assert one.tolist() == five.reshape(4, 5)[:, 0].tolist()


# ----------------------------------------------------------------------------- closed form


def _direct_lsr_scores(train_x, train_y, test_x, num_classes, l2):
    """Whiten, append the bias column, solve (X^T X + l2 I) W = X^T Y in float64."""
    x = train_x.astype(np.float64)
    mean = x.mean(axis=0)
    std = np.sqrt(((x - mean) ** 2).mean(axis=0)) + 1e-5

    def design(z):
        z = (z.astype(np.float64) - mean) / std
        return np.hstack([z, 100.0 * np.ones((len(z), 1))])

    big_x = design(train_x)
    targets = -np.ones((len(train_y), num_classes))
    targets[np.arange(len(train_y)), train_y] = 1.0
    w = np.linalg.solve(big_x.T @ big_x + l2 * np.eye(big_x.shape[1]), big_x.T @ targets)
    return design(test_x) @ w


@pytest.mark.parametrize("l2", [2.0**10, 0.5])
@pytest.mark.parametrize("n, dim", [(300, 20), (15, 40)], ids=["primal", "dual"])
def test_lsr_matches_normal_equations(n, dim, l2):
    train_x, train_y, test_x, test_y = _blobs(n + dim, n, 50, dim, 4, spread=2.0)
    got = evaluators.lsr_scores(train_x, train_y, test_x, 4, l2_reg=l2)
    want = _direct_lsr_scores(train_x, train_y, test_x, 4, l2)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10 * np.abs(want).max())
    acc = evaluators.lsr_accuracy(train_x, train_y, test_x, test_y, 4, l2_reg=l2)
    assert acc == np.mean(np.argmax(want, axis=1) == test_y)


def test_lsr_separable_is_exact():
    train_x, train_y, test_x, test_y = _blobs(0, 200, 100, 8, 3, spread=0.05)
    assert evaluators.lsr_accuracy(train_x, train_y, test_x, test_y, 3) == 1.0


# ----------------------------------------------------------------------------- constant features


def test_constant_feature_gives_no_nan():
    train_x, train_y, test_x, test_y = _blobs(1, 120, 40, 6, 3, spread=1.0)
    const_train, const_test = (np.hstack([a, np.full((len(a), 1), 3.7, np.float32)]) for a in (train_x, test_x))
    for n in (120, 5):  # primal and dual forms
        scores = evaluators.lsr_scores(const_train[:n], train_y[:n], const_test, 3)
        assert np.all(np.isfinite(scores))
        # The constant column whitens to zeros, so it gets zero weight: same scores without it.
        np.testing.assert_allclose(scores, evaluators.lsr_scores(train_x[:n], train_y[:n], test_x, 3), rtol=1e-9)
    probe = evaluators.linear_probe_accuracy(const_train, train_y, const_test, test_y, 3)
    assert probe == evaluators.linear_probe_accuracy(train_x, train_y, test_x, test_y, 3)
    zeros = np.zeros_like(train_x)
    assert np.isfinite(evaluators.knn_accuracy(zeros, train_y, test_x, test_y, 3, k=5))
    assert np.isfinite(evaluators.linear_probe_accuracy(zeros, train_y, test_x, test_y, 3))
    for accs in evaluators.fewshot_accuracy(zeros, train_y, zeros[:40], test_y, 3, shots=(2,), seeds=(0,)).values():
        assert all(np.isfinite(accs))


# ----------------------------------------------------------------------------- kNN


def _brute_knn(train_x, train_y, test_x, num_classes, k, temperature):
    train = train_x.astype(np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for q in test_x.astype(np.float64):
        sims = train @ (q / np.linalg.norm(q))
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = [0.0] * num_classes
        for j in nearest:
            votes[train_y[j]] += np.exp(sims[j] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k, temperature", [(5, 0.1), (1, 0.07), (20, 1.0)])
def test_knn_matches_brute_force(k, temperature):
    train_x, train_y, test_x, test_y = _blobs(k, 150, 37, 8, 4, spread=1.5)
    want = _brute_knn(train_x, train_y, test_x, 4, k, temperature)
    # chunk_size 8: four full chunks and a padded one of five.
    got = evaluators.knn_predict(train_x, train_y, test_x, 4, k=k, temperature=temperature, chunk_size=8)
    np.testing.assert_array_equal(got, want)
    assert evaluators.knn_accuracy(train_x, train_y, test_x, test_y, 4, k, temperature) == np.mean(want == test_y)


def test_knn_k_beyond_training_set_uses_all():
    train_x, train_y, test_x, _ = _blobs(2, 12, 9, 5, 3, spread=1.0)
    got = evaluators.knn_predict(train_x, train_y, test_x, 3, k=100, temperature=0.5)
    np.testing.assert_array_equal(got, _brute_knn(train_x, train_y, test_x, 3, 12, 0.5))


# ----------------------------------------------------------------------------- linear probe

# scikit-learn's default stops at tol=1e-4, short of the exact minimiser of the shared
# objective, which moves a handful of test predictions either way; one percent covers that.
PROBE_TOLERANCE = 0.01


@pytest.mark.parametrize("spread", [0.1, 3.0], ids=["separable", "noisy"])
def test_linear_probe_at_least_sklearn(spread):
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = _blobs(11, 400, 2000, 16, 4, spread=spread)
    rng = np.random.default_rng(12)
    if spread > 1:  # label noise on top of overlapping classes
        flip = rng.random(len(train_y)) < 0.2
        train_y = np.where(flip, rng.integers(0, 4, size=len(train_y)), train_y)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    clf = LogisticRegression(C=1.0, max_iter=10_000).fit((train_x - mean) / std, train_y)
    sk_acc = clf.score((test_x - mean) / std, test_y)
    ours = evaluators.linear_probe_accuracy(train_x, train_y, test_x, test_y, 4)
    assert ours >= sk_acc - PROBE_TOLERANCE
    if spread < 1:
        assert ours == 1.0
    else:
        assert 0.5 < ours < 0.95  # a hard problem, not a trivial one


def test_linear_probe_solves_sklearn_objective():
    """Same minimiser as scikit-learn run to convergence: class probabilities agree."""
    import jax.numpy as jnp
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, _, _ = _blobs(4, 300, 0, 10, 3, spread=2.0)
    x, _ = evaluators._standardise(train_x, train_x[:1])
    clf = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(x, train_y)
    w, b = evaluators._fit_logistic(
        jnp.asarray(x), jnp.asarray(train_y, dtype=jnp.int32), 3, jnp.float32(1 / 300), 1000, jnp.float32(1e-6)
    )
    logits = x @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, clf.predict_proba(x), atol=1e-3)


# ----------------------------------------------------------------------------- few-shot


def test_fewshot_structure_and_determinism():
    train_x, train_y, test_x, test_y = _blobs(9, 500, 200, 12, 5, spread=1.5)
    got = evaluators.fewshot_accuracy(train_x, train_y, test_x, test_y, 5, shots=(1, 5, 10), seeds=(0, 1, 2, 3))
    assert list(got) == [1, 5, 10]
    assert all(len(v) == 4 and all(0.0 <= a <= 1.0 for a in v) for v in got.values())
    assert got == evaluators.fewshot_accuracy(train_x, train_y, test_x, test_y, 5, shots=(1, 5, 10), seeds=(0, 1, 2, 3))
    # Each entry is lsr_accuracy on that seed's sample.
    for shots, per_seed in got.items():
        for seed, acc in zip((0, 1, 2, 3), per_seed, strict=True):
            idx = evaluators.sample_shots(train_y, 5, shots, seed)
            assert len(idx) == 5 * shots
            assert acc == evaluators.lsr_accuracy(train_x[idx], train_y[idx], test_x, test_y, 5)
    assert len(set(got[1])) > 1  # seeds draw different shots
    assert np.mean(got[10]) > np.mean(got[1])
