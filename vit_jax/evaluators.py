"""Evaluators on frozen features: few-shot linear, weighted kNN and a linear probe.

The paper (Dosovitskiy et al., 2021, Section 4 and Appendix) reports "few-shot accuracy" next
to fine-tuning accuracy: the pre-logits features of the frozen model are computed for a small
labelled subset of a dataset (5 examples per class in the headline numbers, 1/5/10/25 in the
appendix; "5-shot linear accuracy"), a regularised least-squares regression from those features to -1/+1 one-hot targets
is solved in closed form, and the accuracy of its argmax on the test split is reported. The
closed form and the sampling of the shots follow big_vision's `evaluators/fewshot_lsr.py`, so
numbers here are comparable to numbers produced there.

Two further evaluators are common for frozen features: a weighted k-nearest-neighbour vote on
cosine similarity (the DINO protocol) and a multinomial logistic-regression probe.

Every function takes plain arrays (features of shape (N, D), integer labels of shape (N,)) and
returns plain Python numbers (accuracies) or numpy arrays (scores, predictions, indices), so the
evaluators depend on neither the trainer nor the input
pipeline: a caller computes features with `models` (and weights from `checkpoint`) and hands
them over. Nothing here imports training code.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Value of the constant column appended to the whitened features. It stands in for a bias
# term; being large, its weight needs to be small and is thus hardly touched by the L2
# penalty (big_vision's choice, kept for comparable numbers).
BIAS_CONSTANT = 100.0
# Added to the standard deviation when whitening (big_vision's value): a constant feature
# whitens to zero instead of 0/0.
WHITEN_EPS = 1e-5


# ----------------------------------------------------------------------------- few-shot


def sample_shots(labels, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """Indices into `labels` of `shots` training examples per class, as big_vision draws them.

    A fresh `np.random.default_rng(seed)` permutes, for each class 0..num_classes-1 in turn,
    the ascending indices of that class's examples; the first `shots` of each permutation are
    concatenated in class order. Because every class consumes the generator whatever `shots`
    is, the 1-shot set of a seed is a subset of its 5-shot set, and so on (big_vision draws the
    permutations once per seed and slices them for every shot count; this gives the same sets).

    A class with fewer than `shots` examples contributes all of them (big_vision slices
    without checking; an absent class contributes none), so the result may hold fewer than
    `num_classes * shots` indices. Labels outside [0, num_classes) are never drawn.
    """
    if shots < 0:
        raise ValueError(f"shots must be non-negative, got {shots}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[:shots])
    if not picked:
        return np.zeros((0,), dtype=np.intp)
    return np.concatenate(picked).astype(np.intp, copy=False)


def _whiten_with_bias(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std with a column of BIAS_CONSTANT appended."""
    z = (x - mean) / std
    return np.concatenate([z, np.full((z.shape[0], 1), BIAS_CONSTANT, dtype=z.dtype)], axis=1)


def lsr_scores(train_x, train_y, test_x, num_classes: int, l2_reg: float = 2.0**10) -> np.ndarray:
    """Scores (N_test, num_classes) of big_vision's closed-form regularised least squares.

    Features are whitened with the training mean and (population standard deviation + 1e-5),
    a constant column of 100 is appended, and targets are one-hot vectors rescaled to -1/+1.
    The weights minimise ||X W - Y||^2 + l2_reg ||W||^2, computed in the cheaper of two equal
    forms: (X^T X + l2 I)^-1 X^T Y when there are at least as many examples as columns
    (a (D+1) x (D+1) system), else X^T (X X^T + l2 I)^-1 Y (an N x N system, the dual form).

    Computed in float64 numpy, whatever the input dtype: the bias column makes X^T X hold
    entries near 1e4 * N next to entries near N, and float32 normal equations would lose
    several of their seven digits to that spread, which can flip argmaxes of close classes.
    The systems are at most a few hundred wide, so float64 costs nothing that shows.
    """
    x = np.asarray(train_x, dtype=np.float64)
    t = np.asarray(test_x, dtype=np.float64)
    y = np.asarray(train_y)
    if x.ndim != 2 or t.ndim != 2 or x.shape[1] != t.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {x.shape} and {t.shape}")
    if x.shape[0] == 0:
        raise ValueError("lsr_scores needs at least one training example")
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + WHITEN_EPS
    xb = _whiten_with_bias(x, mean, std)
    targets = 2.0 * (y[:, None] == np.arange(num_classes)[None, :]).astype(np.float64) - 1.0

    n, d = xb.shape
    if n >= d:
        gram = xb.T @ xb
        gram[np.diag_indices_from(gram)] += l2_reg
        w = np.linalg.solve(gram, xb.T @ targets)
    else:
        kernel = xb @ xb.T
        kernel[np.diag_indices_from(kernel)] += l2_reg
        w = xb.T @ np.linalg.solve(kernel, targets)
    return _whiten_with_bias(t, mean, std) @ w


def lsr_accuracy(train_x, train_y, test_x, test_y, num_classes: int, l2_reg: float = 2.0**10) -> float:
    """Test accuracy of the argmax of `lsr_scores` (big_vision's few-shot linear evaluator)."""
    scores = lsr_scores(train_x, train_y, test_x, num_classes, l2_reg)
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(test_y)))


def fewshot_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    shots=(1, 5, 10, 25),
    seeds=(0, 1, 2),
    l2_reg: float = 2.0**10,
) -> dict[int, list[float]]:
    """{shots: [accuracy for each seed]}: the paper's few-shot linear accuracy.

    For each shot count and seed, `sample_shots(train_y, num_classes, shots, seed)` picks the
    training subset and `lsr_accuracy` scores it on the whole test set. The paper's headline
    number is the mean over seeds of the 5-shot entry.
    """
    train_x = np.asarray(train_x)
    train_y = np.asarray(train_y)
    results = {}
    for k in shots:
        per_seed = []
        for seed in seeds:
            idx = sample_shots(train_y, num_classes, k, seed)
            per_seed.append(lsr_accuracy(train_x[idx], train_y[idx], test_x, test_y, num_classes, l2_reg))
        results[int(k)] = per_seed
    return results


# ----------------------------------------------------------------------------- kNN


def _l2_normalise(x: jax.Array) -> jax.Array:
    # A zero vector stays zero (similarity 0 to everything) instead of becoming NaN.
    norm = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_votes(query, bank, bank_y, k: int, num_classes: int, temperature):
    sims = query @ bank.T
    top_sims, top_idx = jax.lax.top_k(sims, k)
    weights = jnp.exp(top_sims / temperature)
    onehot = jax.nn.one_hot(bank_y[top_idx], num_classes, dtype=weights.dtype)
    return jnp.einsum("qk,qkc->qc", weights, onehot)


def knn_predict(
    train_x,
    train_y,
    test_x,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Class predictions (N_test,) of a weighted k-nearest-neighbour vote on cosine similarity.

    Features are L2-normalised (an all-zero vector stays zero); each test example's k most
    similar training examples vote for their label with weight exp(similarity / temperature),
    and the class with the largest total wins (the lowest class on a tie). A k larger than
    the training set means all of it. This is the DINO protocol (k=20, temperature 0.07).

    Test examples go through in chunks of `chunk_size` (the last one padded to the same shape,
    so one compiled program serves all), so at most chunk_size x N_train similarities exist at
    once (1024 x 60,000 float32 is 250 MB). float32 suffices: similarities lie in [-1, 1],
    weights below exp(1/temperature) (1.6e6 for 0.07) and a sum of k of them stays far from
    overflow.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    bank = _l2_normalise(jnp.asarray(train_x, dtype=jnp.float32))
    bank_y = jnp.asarray(train_y, dtype=jnp.int32)
    test = _l2_normalise(jnp.asarray(test_x, dtype=jnp.float32))
    n_test = test.shape[0]
    if bank.shape[0] == 0:
        raise ValueError("knn_predict needs at least one training example")
    if n_test == 0:
        return np.zeros((0,), dtype=np.int64)
    k = max(1, min(int(k), bank.shape[0]))
    chunk = max(1, min(int(chunk_size), n_test))
    preds = []
    for start in range(0, n_test, chunk):
        query = test[start : start + chunk]
        valid = query.shape[0]
        if valid < chunk:
            query = jnp.pad(query, ((0, chunk - valid), (0, 0)))
        votes = _knn_votes(query, bank, bank_y, k, num_classes, jnp.float32(temperature))
        preds.append(np.argmax(np.asarray(votes)[:valid], axis=1))
    return np.concatenate(preds)


def knn_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Test accuracy of `knn_predict` (weighted kNN on cosine similarity, DINO-style)."""
    preds = knn_predict(train_x, train_y, test_x, num_classes, k, temperature, chunk_size)
    return float(np.mean(preds == np.asarray(test_y)))


# ----------------------------------------------------------------------------- linear probe


def _standardise(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both sets by the training mean and standard deviation (a constant feature by 1)."""
    x = np.asarray(train_x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x = ((x - mean) / std).astype(np.float32)
    t = ((np.asarray(test_x, dtype=np.float64) - mean) / std).astype(np.float32)
    return x, t


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _fit_logistic(x, y, num_classes: int, l2: float, max_iter: int, tol: float):
    """Weights (D, C) and biases (C,) minimising mean cross-entropy + l2/2 ||W||^2 by L-BFGS."""
    onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)

    def loss(params):
        w, b = params
        logp = jax.nn.log_softmax(x @ w + b, axis=1)
        return -jnp.mean(jnp.sum(onehot * logp, axis=1)) + 0.5 * l2 * jnp.sum(w * w)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))
    state = opt.init(params)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params, _ = jax.lax.while_loop(keep_going, step, (params, state))
    return params


def linear_probe_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    *,
    inverse_reg: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> float:
    """Test accuracy of multinomial logistic regression on standardised frozen features.

    Recipe (fixed): standardise with the training mean and standard deviation; minimise
    mean cross-entropy + l2/2 ||W||^2 with l2 = 1 / (inverse_reg * N_train), bias unpenalised,
    by full-batch L-BFGS (optax.lbfgs, memory 10, zoom line search) from zeros, until the
    gradient norm falls below `tol` or after `max_iter` iterations, the whole loop in one
    jitted `lax.while_loop`. That objective is scikit-learn's `LogisticRegression(C=inverse_reg)`
    objective divided by N, so the default is sklearn's default (C=1.0) solved to convergence:
    the same minimiser, hence the same accuracy up to optimisation tolerance, and a reference
    users know. Full-batch L-BFGS on a convex problem of a few thousand parameters converges in
    tens to hundreds of cheap steps, far faster and more exactly than mini-batch Adam.

    float32 is enough here: the features are standardised, the softmax is taken in log space,
    and the gradient tolerance (1e-5) sits well above float32 rounding of a mean over N.
    """
    y = np.asarray(train_y)
    if y.shape[0] == 0:
        raise ValueError("linear_probe_accuracy needs at least one training example")
    x, t = _standardise(train_x, test_x)
    l2 = 1.0 / (inverse_reg * y.shape[0])
    w, b = _fit_logistic(
        jnp.asarray(x), jnp.asarray(y, dtype=jnp.int32), num_classes, jnp.float32(l2), int(max_iter), jnp.float32(tol)
    )
    logits = t @ np.asarray(w, dtype=np.float32) + np.asarray(b, dtype=np.float32)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(test_y)))
