"""Tests of the MeZO estimator, step, replay and masked training (training/mezo.py, perturb.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import training
from training.perturb import leaf_normal, mask_leaves

EPS = 1e-3
SMALL_CHUNK = 64  # forces the chunked z path on the test models' larger leaves


def bits(tree):
    """uint32 views of a float32 pytree's leaves, for bit-exact comparisons."""
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def assert_bitwise_equal(a, b):
    for x, y in zip(bits(a), bits(b), strict=True):
        np.testing.assert_array_equal(x, y)


def copy(tree):
    return jax.tree.map(jnp.array, tree)


# ----------------------------------------------------------------------------- test problems


def quadratic_problem(seed=0, shapes=None):
    """L(θ) = Σ_leaves ½ Σ h ⊙ (θ - θ*)², by default with a [40, 30] and a [30] leaf."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {"w": (40, 30), "b": (30,)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    target = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    curv = {k: jnp.asarray(rng.uniform(0.5, 2.0, size=s), jnp.float32) for k, s in shapes.items()}

    def loss_fn(p, batch):
        del batch
        terms = jax.tree.map(lambda x, t, h: 0.5 * jnp.sum(h * (x - t) ** 2), p, target, curv)
        return sum(jax.tree.leaves(terms))

    return params, loss_fn


def linear_regression(seed=0, n=256, d=16, k=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=(d, k)).astype(np.float32)
    y = x @ w_true + 0.01 * rng.normal(size=(n, k)).astype(np.float32)
    params = {"w": jnp.zeros((d, k)), "b": jnp.zeros((k,))}

    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    return params, loss_fn, (jnp.asarray(x), jnp.asarray(y))


def mlp(num_layers=16, width=128, batch=8, seed=0):
    """A tanh MLP with many equal-size [width, width] leaves plus biases."""
    key = jax.random.key(seed)
    params = {
        f"layer{i:02d}": {
            "w": jax.random.normal(jax.random.fold_in(key, i), (width, width)) / np.sqrt(width),
            "b": jnp.zeros((width,)),
        }
        for i in range(num_layers)
    }

    def loss_fn(p, data):
        x, y = data
        for i in range(num_layers):
            layer = p[f"layer{i:02d}"]
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return jnp.mean((x - y) ** 2)

    data = (
        jax.random.normal(jax.random.fold_in(key, 1000), (batch, width)),
        0.5 * jax.random.normal(jax.random.fold_in(key, 1001), (batch, width)),
    )
    return params, loss_fn, data


# ----------------------------------------------------------------------------- perturbation


def test_z_is_drawn_leaf_by_leaf_from_folded_keys():
    key = jax.random.key(3)
    params = {"a": jnp.zeros((5, 7)), "b": jnp.zeros((3,))}
    z = training.perturbation(key, params)
    leaves = jax.tree.leaves(params)  # order: a, b
    for i, (zi, p) in enumerate(zip(jax.tree.leaves(z), leaves)):
        expect = jax.random.normal(
            jax.random.fold_in(jax.random.fold_in(key, i), 0), (p.size,), jnp.float32
        )
        np.testing.assert_array_equal(np.ravel(zi), expect)


def test_chunked_z_is_the_concatenation_of_per_chunk_draws():
    leaf_key = jax.random.key(5)
    n, chunk = 1000, 64  # 15 full chunks and a 40-element rest
    z = jax.jit(lambda k: leaf_normal(k, (10, 100), chunk))(leaf_key)
    pieces = [
        jax.random.normal(jax.random.fold_in(leaf_key, j), (chunk,), jnp.float32)
        for j in range(-(-n // chunk))
    ]
    np.testing.assert_array_equal(np.ravel(z), np.concatenate(pieces)[:n])
    assert abs(float(jnp.mean(z))) < 0.15 and 0.85 < float(jnp.std(z)) < 1.15


def test_rademacher_z_is_one_sign_per_bit_of_per_chunk_words():
    leaf_key = jax.random.key(8)
    n, chunk = 1000, 96  # 10 full chunks of 3 words and a 40-element rest (2 words, 24 bits used)
    z = jax.jit(lambda k: leaf_normal(k, (10, 100), chunk, "rademacher"))(leaf_key)
    pieces = []
    for j in range(-(-n // chunk)):
        words = np.asarray(jax.random.bits(jax.random.fold_in(leaf_key, j), (3,), jnp.uint32))
        signs = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1  # bit c % 32 of word c // 32
        pieces.append(1.0 - 2.0 * signs.reshape(-1).astype(np.float32))
    np.testing.assert_array_equal(np.ravel(z), np.concatenate(pieces)[:n])
    assert set(np.unique(z)) == {-1.0, 1.0} and abs(float(jnp.mean(z))) < 0.1


@pytest.mark.parametrize("distribution", training.DISTRIBUTIONS)
def test_z_is_the_same_with_and_without_jit_vmap_and_for_raw_keys(distribution):
    params = {"a": jnp.zeros((37, 29)), "b": jnp.zeros((5,))}
    kw = dict(chunk_size=100, distribution=distribution)
    eager = training.perturbation(jax.random.key(4), params, **kw)
    jitted = jax.jit(lambda k: training.perturbation(k, params, **kw))(jax.random.key(4))
    raw = training.perturbation(jax.random.PRNGKey(4), params, **kw)
    assert_bitwise_equal(eager, jitted)
    assert_bitwise_equal(eager, raw)
    # vmapped over keys (Meerkat's clients), each row is that key's z.
    keys = jnp.stack([jax.random.key(9), jax.random.key(4)])
    batched = jax.vmap(lambda k: training.perturbation(k, params, **kw))(keys)
    assert_bitwise_equal(jax.tree.map(lambda x: x[1], batched), eager)


@pytest.mark.parametrize("distribution", training.DISTRIBUTIONS)
def test_other_prng_implementations_follow_the_same_definition(distribution):
    # rbg keys go through jax.random itself (no written-out threefry): same formula, own stream.
    key = jax.random.key(6, impl="rbg")
    params = {"w": jnp.zeros((300,))}
    z = training.perturbation(key, params, chunk_size=128, distribution=distribution)["w"]
    leaf_key = jax.random.fold_in(key, 0)

    def draw(k, n):
        if distribution == "normal":
            return np.asarray(jax.random.normal(k, (n,), jnp.float32))
        words = np.asarray(jax.random.bits(k, (-(-n // 32),), jnp.uint32))
        bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
        return 1.0 - 2.0 * bits.reshape(-1)[:n].astype(np.float32)

    want = np.concatenate([draw(jax.random.fold_in(leaf_key, j), 128) for j in range(3)])[:300]
    np.testing.assert_array_equal(z, want)


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError, match="distribution"):
        training.perturbation(jax.random.key(0), {"a": jnp.zeros(3)}, distribution="uniform")
    with pytest.raises(ValueError, match="distribution"):
        training.mezo_step(lambda p, b: 0.0, optax.sgd(1.0), eps=EPS, distribution="gauss")


def test_z_is_zero_outside_the_mask_and_absent_for_frozen_leaves():
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4,))}
    mask = {"a": jnp.eye(4, dtype=bool), "b": False}
    z = training.perturbation(jax.random.key(0), params, mask=mask)
    assert np.all(np.asarray(z["a"])[~np.eye(4, dtype=bool)] == 0)
    assert np.all(np.diag(np.asarray(z["a"])) != 0)
    np.testing.assert_array_equal(z["b"], np.zeros(4))


# ----------------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("distribution", training.DISTRIBUTIONS)
def test_estimator_equals_the_finite_difference_along_the_regenerated_z(distribution):
    params, loss_fn = quadratic_problem()
    key = jax.random.key(7)
    kw = dict(chunk_size=SMALL_CHUNK, distribution=distribution)
    grad_fn = training.mezo_value_and_grad(loss_fn, eps=EPS, **kw)
    loss, g = jax.jit(grad_fn)(params, None, key)

    @jax.jit
    def by_hand(p):
        z = training.perturbation(key, p, **kw)
        plus = loss_fn(jax.tree.map(lambda x, zz: x + EPS * zz, p, z), None)
        minus = loss_fn(jax.tree.map(lambda x, zz: x - EPS * zz, p, z), None)
        return (plus + minus) / 2, (plus - minus) / (2 * EPS)

    want_loss, want_g = by_hand(params)
    assert g.shape == () and g.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(g).view(np.uint32), np.asarray(want_g).view(np.uint32))
    np.testing.assert_array_equal(
        np.asarray(loss).view(np.uint32), np.asarray(want_loss).view(np.uint32)
    )
    # The loss is an O(ε²) estimate of L(θ).
    np.testing.assert_allclose(loss, loss_fn(params, None), rtol=1e-4)


@pytest.mark.parametrize("distribution", training.DISTRIBUTIONS)
def test_mean_of_many_estimates_approaches_the_true_gradient(distribution):
    # The estimate's noise grows with the dimension d: E|ĝ - ∇L|² ≈ (d + 1)|∇L|² / n.
    params, loss_fn = quadratic_problem(shapes={"w": (8, 12), "b": (12,)})
    key = jax.random.key(11)
    n = 4000
    grad_fn = training.mezo_value_and_grad(
        loss_fn, eps=EPS, num_samples=n, distribution=distribution
    )

    @jax.jit
    def estimate(p):
        _, g = grad_fn(p, None, key)
        return g, training.zo_gradient(g, key, p, distribution=distribution)

    g, est = estimate(params)
    assert g.shape == (n,)
    true = jax.grad(loss_fn)(params, None)
    flat_est = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(est)])
    flat_true = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(true)])
    cosine = float(flat_est @ flat_true / (jnp.linalg.norm(flat_est) * jnp.linalg.norm(flat_true)))
    assert cosine >= 0.9, cosine


def test_n_sample_gradient_is_the_mean_of_single_sample_gradients():
    params, loss_fn = quadratic_problem()
    key = jax.random.key(2)
    g = jnp.asarray([0.5, -2.0, 1.25], jnp.float32)
    est = jax.jit(training.zo_gradient)(g, key, params)
    parts = [training.zo_gradient(g[i], jax.random.fold_in(key, i), params) for i in range(3)]
    want = jax.tree.map(lambda *xs: sum(xs) / 3, *parts)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), est, want)


def test_estimator_rejects_bad_arguments():
    _, loss_fn = quadratic_problem()
    with pytest.raises(ValueError, match="eps"):
        training.mezo_value_and_grad(loss_fn, eps=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        training.mezo_value_and_grad(loss_fn, eps=EPS, num_samples=0)
    grad_fn = training.mezo_value_and_grad(lambda p, b: jnp.sum(p["i"]), eps=EPS)
    with pytest.raises(TypeError, match="floating-point"):
        grad_fn({"i": jnp.arange(3)}, None, jax.random.key(0))
    with pytest.raises(ValueError, match="does not broadcast"):
        training.perturbation(
            jax.random.key(0), {"a": jnp.zeros((3, 4))}, mask={"a": jnp.ones((5,), bool)}
        )


# ----------------------------------------------------------------------------- the step


def test_same_key_and_step_give_a_bitwise_identical_update():
    params, loss_fn, data = mlp(num_layers=3, width=32)
    tx = training.zo_sgd(1e-2, weight_decay=1e-2)
    step = training.mezo_step(loss_fn, tx, eps=EPS, chunk_size=SMALL_CHUNK)
    key = training.step_key(jax.random.key(0), 5)
    a = step(copy(params), tx.init(params), data, key)
    b = step(copy(params), tx.init(params), data, key)
    assert_bitwise_equal(a[0], b[0])
    np.testing.assert_array_equal(
        np.asarray(a[2]).view(np.uint32), np.asarray(b[2]).view(np.uint32)
    )
    c = step(copy(params), tx.init(params), data, training.step_key(jax.random.key(0), 6))
    assert not np.array_equal(bits(a[0])[1], bits(c[0])[1])


def test_step_does_not_retrace_after_the_first_call():
    params, loss_fn, data = mlp(num_layers=2, width=16)
    traces = []

    def counting_loss(p, batch):
        traces.append(1)  # runs only while tracing
        return loss_fn(p, batch)

    tx = optax.adam(1e-3)
    step = training.mezo_step(counting_loss, tx, eps=EPS, return_projected_grad=True)
    opt_state = tx.init(params)
    params, opt_state, _, _ = step(params, opt_state, data, training.step_key(jax.random.key(0), 0))
    after_first = len(traces)
    assert after_first > 0
    for t in range(1, 4):
        params, opt_state, _, _ = step(
            params, opt_state, data, training.step_key(jax.random.key(0), t)
        )
    assert len(traces) == after_first


@pytest.mark.parametrize(
    "tx_name,num_samples,masked,distribution",
    [
        ("sgd_schedule_decay", 1, False, "normal"),
        ("adam_clip", 1, False, "normal"),
        ("sgd", 2, True, "normal"),
        ("sgd_schedule_decay", 2, True, "rademacher"),
    ],
)
def test_replay_rebuilds_the_trained_params_bit_for_bit(tx_name, num_samples, masked, distribution):
    params0, loss_fn, data = mlp(num_layers=3, width=32)
    tx = {
        "sgd_schedule_decay": training.zo_sgd(
            optax.linear_schedule(5e-2, 1e-2, 10), weight_decay=1e-2
        ),
        "adam_clip": training.zo_adam(1e-3, max_norm=1.0, weight_decay=1e-3),
        "sgd": optax.sgd(1e-2),
    }[tx_name]
    mask = training.random_mask(jax.random.key(9), params0, density=0.05) if masked else None
    root = jax.random.key(42)
    step = training.mezo_step(
        loss_fn,
        tx,
        eps=EPS,
        num_samples=num_samples,
        mask=mask,
        chunk_size=SMALL_CHUNK,
        distribution=distribution,
        return_projected_grad=True,
    )
    seen = []
    params, _, log, losses = training.fit(
        step,
        copy(params0),
        tx.init(params0),
        [data] * 8,
        root_key=root,
        on_step=lambda t, p, loss: seen.append((t, loss)),
    )
    assert [t for t, _ in log] == list(range(8)) and len(losses) == 8
    assert seen == list(enumerate(losses))
    assert all(np.shape(g) == (() if num_samples == 1 else (num_samples,)) for _, g in log)
    kw = dict(root_key=root, mask=mask, chunk_size=SMALL_CHUNK, distribution=distribution)
    replayed, _ = training.replay(params0, log, tx, **kw)
    assert_bitwise_equal(replayed, params)
    # The log also works as an array of [step, g...] rows (float64 keeps float32 g exact).
    rows = np.array([[t, *np.atleast_1d(g)] for t, g in log], np.float64)
    again, _ = training.replay(params0, rows, tx, **kw)
    assert_bitwise_equal(again, params)
    # With the other distribution the same log rebuilds other params.
    other = "normal" if distribution == "rademacher" else "rademacher"
    wrong, _ = training.replay(params0, log, tx, **{**kw, "distribution": other})
    assert not all(np.array_equal(a, b) for a, b in zip(bits(wrong), bits(params)))


def test_entries_outside_the_mask_never_change_bitwise():
    params, loss_fn, data = mlp(num_layers=2, width=32)
    # Negative zeros outside the mask would turn into +0.0 under a plain "θ - η·0" update.
    params = jax.tree.map(lambda x: x.at[..., 0].set(-0.0), params)
    mask = training.magnitude_mask(params, density=0.02)
    mask["layer01"]["b"] = False  # a frozen whole leaf
    tx = training.zo_adam(1e-2, weight_decay=0.1, decay_mask_fn=None)
    step = training.mezo_step(loss_fn, tx, eps=1e-2, mask=mask, chunk_size=SMALL_CHUNK)
    new, opt_state = copy(params), tx.init(params)
    for t in range(5):
        new, opt_state, _ = step(new, opt_state, data, training.step_key(jax.random.key(1), t))
    changed = 0
    for m, old, upd in zip(mask_leaves(mask, params), bits(params), bits(new), strict=True):
        m = np.broadcast_to(np.asarray(m), old.shape)
        np.testing.assert_array_equal(old[~m], upd[~m])
        changed += int(np.sum(old[m] != upd[m]))
    assert changed > 0


@pytest.mark.parametrize(
    "tx_name,distribution", [("sgd", "normal"), ("adam", "normal"), ("sgd", "rademacher")]
)
def test_loss_decreases_on_linear_regression(tx_name, distribution):
    params, loss_fn, (x, y) = linear_regression()
    tx = training.zo_sgd(2e-2) if tx_name == "sgd" else training.zo_adam(2e-2)
    step = training.mezo_step(loss_fn, tx, eps=1e-3, num_samples=4, distribution=distribution)
    initial = float(loss_fn(params, (x, y)))
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    for t in range(300):
        idx = rng.choice(x.shape[0], 32, replace=False)
        params, opt_state, _ = step(
            params, opt_state, (x[idx], y[idx]), training.step_key(jax.random.key(0), t)
        )
    final = float(loss_fn(params, (x, y)))
    assert final < 0.25 * initial, (initial, final)


def test_loss_decreases_on_a_small_mlp():
    params, loss_fn, data = mlp(num_layers=2, width=16)
    tx = training.zo_sgd(0.2)
    step = training.mezo_step(loss_fn, tx, eps=1e-3, num_samples=8)
    initial = float(loss_fn(params, data))
    opt_state = tx.init(params)
    for t in range(150):
        params, opt_state, _ = step(
            params, opt_state, data, training.step_key(jax.random.key(3), t)
        )
    assert float(loss_fn(params, data)) < 0.9 * initial


def step_and_forward_memory(params, loss_fn, data, **kw):
    """memory_analysis of the jitted SGD step and of the forward: args + outputs - aliased + temp."""

    def total(m):
        return (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )

    tx = optax.sgd(1e-3)
    step = training.mezo_step(loss_fn, tx, eps=EPS, **kw)
    mem = step.lower(params, tx.init(params), data, jax.random.key(0)).compile().memory_analysis()
    options = training.lean_compiler_options() or None
    forward = jax.jit(loss_fn, compiler_options=options).lower(params, data).compile()
    return mem, total(mem), total(forward.memory_analysis())


@pytest.mark.parametrize("distribution", training.DISTRIBUTIONS)
@pytest.mark.parametrize("num_layers", [8, 4])
def test_step_needs_the_forward_plus_one_perturbed_leaf(distribution, num_layers):
    # Largest tensor 1/8 (1/4) of the params: the step may add the perturbed copy of that one
    # leaf to the forward's memory (1 + 1/8 = 1.125x, the ≤ 1.15x target), nothing
    # parameter-sized, and no z chunk buffers (z is fused into its consumers).
    params, loss_fn, data = mlp(num_layers=num_layers, width=256, batch=16)
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    largest = max(x.nbytes for x in jax.tree.leaves(params))
    _, step_bytes, forward_bytes = step_and_forward_memory(
        params, loss_fn, data, distribution=distribution, chunk_size=4096
    )
    assert largest <= step_bytes - forward_bytes < largest + 0.02 * params_bytes
    if num_layers == 8:
        assert step_bytes <= 1.15 * forward_bytes


def test_jitted_step_temporaries_are_below_half_the_params():
    # 16 equal [128, 128] leaves: if z (or every perturbed leaf) were alive at once, the
    # temporaries would be at least the size of the params.
    params, loss_fn, data = mlp(num_layers=16, width=128)
    params_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    tx = optax.sgd(1e-3)
    step = training.mezo_step(loss_fn, tx, eps=EPS, chunk_size=4096)
    compiled = step.lower(params, tx.init(params), data, jax.random.key(0)).compile()
    mem = compiled.memory_analysis()
    assert mem.temp_size_in_bytes < 0.5 * params_bytes, (mem.temp_size_in_bytes, params_bytes)
    # Donation: the new params are written over the old ones.
    assert mem.alias_size_in_bytes >= params_bytes


def test_bfloat16_params_keep_their_dtype():
    params, loss_fn, (x, y) = linear_regression()
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    tx = optax.sgd(1e-2)
    step = training.mezo_step(loss_fn, tx, eps=1e-2)
    new, _, loss = step(params, tx.init(params), (x, y), jax.random.key(0))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(new))
    assert jnp.isfinite(loss)


def test_flax_nnx_model_trains_through_split_and_merge():
    from flax import nnx

    model = nnx.Sequential(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.Linear(16, 1, rngs=nnx.Rngs(1)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (64, 8))
    y = jnp.sum(x, axis=1, keepdims=True)

    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((nnx.merge(graphdef, p, rest)(xb) - yb) ** 2)

    tx = training.zo_sgd(1e-2, weight_decay=1e-4)
    step = training.mezo_step(loss_fn, tx, eps=1e-3, num_samples=4)
    initial = float(loss_fn(params, (x, y)))
    opt_state = tx.init(params)
    for t in range(100):
        params, opt_state, _ = step(params, opt_state, (x, y), jax.random.key(t))
    assert float(loss_fn(params, (x, y))) < initial
    nnx.update(model, params)
    assert float(jnp.mean((model(x) - y) ** 2)) == pytest.approx(float(loss_fn(params, (x, y))))


# ----------------------------------------------------------------------------- in-place mode


@pytest.mark.parametrize("distribution", training.DISTRIBUTIONS)
def test_in_place_step_needs_no_more_memory_than_the_forward(distribution):
    # Largest tensor 1/4 of the params: the exact step needs 1.25x the forward (its perturbed
    # copy); perturbing the donated buffers in place needs none.
    params, loss_fn, data = mlp(num_layers=4, width=256, batch=16)
    largest = max(x.nbytes for x in jax.tree.leaves(params))
    kw = dict(distribution=distribution, chunk_size=4096)
    _, exact, forward = step_and_forward_memory(params, loss_fn, data, **kw)
    _, in_place, _ = step_and_forward_memory(params, loss_fn, data, in_place=True, **kw)
    assert exact >= forward + largest
    assert in_place <= 1.05 * forward < 1.15 * forward


def test_in_place_replay_is_bit_exact_and_drift_is_rounding_only():
    params0, loss_fn, data = mlp(num_layers=3, width=32)
    mask = training.random_mask(jax.random.key(2), params0, density=0.5)
    root = jax.random.key(5)
    kw = dict(mask=mask, chunk_size=SMALL_CHUNK, distribution="normal")

    def train(tx, in_place):
        step = training.mezo_step(
            loss_fn, tx, eps=EPS, in_place=in_place, return_projected_grad=True, **kw
        )
        return training.fit(step, copy(params0), tx.init(params0), [data] * 6, root_key=root)

    tx = training.zo_sgd(5e-2, weight_decay=1e-2, decay_mask_fn=None)
    params, _, log, _ = train(tx, True)
    replayed, _ = training.replay(params0, log, tx, root_key=root, in_place_eps=EPS, **kw)
    assert_bitwise_equal(replayed, params)
    exact_replay, _ = training.replay(params0, log, tx, root_key=root, **kw)
    assert not all(np.array_equal(a, b) for a, b in zip(bits(exact_replay), bits(params)))
    for m, old, new in zip(mask_leaves(mask, params0), bits(params0), bits(params), strict=True):
        outside = ~np.broadcast_to(np.asarray(m), old.shape)
        np.testing.assert_array_equal(old[outside], new[outside])
    # With a zero learning rate the exact step leaves θ bit for bit; in place, the rounding of
    # θ+εz-2εz+εz moves it, by about an ulp of εz per step.
    frozen, _, _, _ = train(optax.sgd(0.0), False)
    assert_bitwise_equal(frozen, params0)
    drifted, _, _, _ = train(optax.sgd(0.0), True)
    # Each step rounds three times, to the spacing of |θ| + 2ε|z| at most (|z| < 6 here).
    for old, new in zip(jax.tree.leaves(params0), jax.tree.leaves(drifted), strict=True):
        old, new = np.asarray(old), np.asarray(new)
        bound = 6 * 3 * np.spacing(np.abs(old) + np.float32(12 * EPS))
        assert np.all(np.abs(new - old) <= bound)
    assert not all(np.array_equal(a, b) for a, b in zip(bits(drifted), bits(params0)))


def test_in_place_needs_one_sample():
    _, loss_fn = quadratic_problem()
    with pytest.raises(ValueError, match="num_samples"):
        training.mezo_step(loss_fn, optax.sgd(1.0), eps=EPS, num_samples=2, in_place=True)
