"""Issue 8: every failure it lists, as a small program with its expected value or gradient.

Each test compiles a plain program the way a user writes it and checks the compiled program against
the numbers the un-compiled one gives (values and outer gradients, float64).
"""

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ttt_compile as tc
from ttt_compile.models import layers

sys.path.insert(0, os.path.dirname(__file__))
import np_eval  # noqa: E402

KEY = jax.random.PRNGKey(0)
PIPELINES = [
    "none",
    "default",
    ["simplify"],
    ["fold_zero_init", "simplify"],
    ["unroll", "fold_zero_init", "simplify", "cse", "dce"],
]


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def value_and_grads(model, x):
    """(model(x), outer gradients of sum(sin(model(x)) * r)), r a fixed cotangent: traced once and
    evaluated with NumPy (tests/np_eval.py; eager JAX took minutes for these tests)."""
    shape = jax.eval_shape(model, x)
    return np_eval.value_and_grads(model, x, jax.random.normal(jax.random.PRNGKey(1), shape.shape, shape.dtype))


def assert_same_program(model, x, passes, rtol=1e-10):
    """Values and outer gradients of tc.compile(model, x, passes) equal the un-compiled model's."""
    compiled = tc.compile(model, x, passes=passes)
    (y, g), (y_ref, g_ref) = value_and_grads(compiled, x), value_and_grads(model, x)
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    return compiled


# ------------------------------------------------------------------ silent wrong answers
class AddIndex(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return self.w * x + (jnp.arange(x.shape[-1]) // 2).astype(x.dtype)


@pytest.mark.parametrize("passes", [["simplify"], "default"])
def test_integer_index_arithmetic_is_not_float_algebra(passes):
    m, x = AddIndex(jnp.ones(5)), jnp.zeros(5)
    np.testing.assert_array_equal(tc.compile(m, x, passes=passes)(x), [0.0, 0.0, 1.0, 1.0, 2.0])


class Truncate(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return (self.w * x * 0.5).astype(jnp.int32).astype(x.dtype)


@pytest.mark.parametrize("passes", [["simplify"], "default"])
def test_scalar_factor_not_moved_past_a_truncation(passes):
    m, x = Truncate(jnp.ones(3)), jnp.array([1.0, 3.0, 5.0])
    np.testing.assert_array_equal(tc.compile(m, x, passes=passes)(x), [0.0, 1.0, 2.0])


@jax.custom_vjp
def half_gradient(x):
    return x


half_gradient.defvjp(lambda x: (x, None), lambda _, g: (0.5 * g,))


class HalfGradLayer(eqx.Module):
    """A TTT layer inside a custom_vjp whose backward rule halves the cotangent."""

    layer: eqx.Module

    def __call__(self, x):
        return half_gradient(self.layer(x))


class PlainLayer(eqx.Module):
    layer: eqx.Module

    def __call__(self, x):
        return self.layer(x)


@pytest.mark.parametrize("passes", PIPELINES)
def test_custom_vjp_around_a_layer_keeps_its_backward_rule(passes):
    layer = layers.mttt_linear(dim=6, heads=2, key=KEY, steps=2)
    x = jax.random.normal(KEY, (5, 6))
    compiled = assert_same_program(HalfGradLayer(layer), x, passes)
    # the rule's meaning, spelled out: sum(sin(y) * r) has half the plain gradient w.r.t. every parameter
    y = layer(x)
    r = jax.random.normal(jax.random.PRNGKey(1), y.shape, y.dtype)
    plain = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x)) * r))(PlainLayer(layer))
    got = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x)) * r))(compiled)
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(got, eqx.is_inexact_array)),
        jax.tree_util.tree_leaves(eqx.filter(plain, eqx.is_inexact_array)),
        strict=True,
    ):
        np.testing.assert_allclose(a, 0.5 * b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ crashes on ordinary code
class ReluLearner(eqx.Module):
    """f(z; W) = relu(W z)."""

    W: jax.Array

    def __call__(self, z):
        return jax.nn.relu(self.W @ z)


@pytest.mark.parametrize("passes", PIPELINES)
def test_relu_inside_a_learner(passes):
    layer = tc.TTTLayer(
        6,
        2,
        ReluLearner(jax.random.normal(KEY, (3, 3))),
        init="learned",
        inner=tc.Inner(steps=2, optimizer=optax.sgd(0.3)),
        key=KEY,
    )
    assert_same_program(layer, jax.random.normal(jax.random.PRNGKey(2), (5, 6)), passes)


class ReluOutside(eqx.Module):
    layer: eqx.Module
    w: jax.Array

    def __call__(self, x):
        return self.layer(jax.nn.relu(self.w * x))


@pytest.mark.parametrize("passes", [*PIPELINES, ["dce"], ["cse"], ["lower"], ["remat"], ["sgd_batch"], ["dual_form"]])
def test_relu_outside_any_layer(passes):
    model = ReluOutside(layers.mttt_linear(dim=6, heads=2, key=KEY), jnp.linspace(-1.0, 1.0, 6))
    assert_same_program(model, jax.random.normal(KEY, (5, 6)), passes)


@pytest.mark.parametrize("passes", PIPELINES)
def test_inner_learning_rate_schedule(passes):
    layer = layers.mttt_linear(
        dim=6, heads=2, key=KEY, steps=3, optimizer=optax.sgd(optax.exponential_decay(0.5, 1, 0.5))
    )
    assert_same_program(layer, jax.random.normal(KEY, (5, 6)), passes)


class CondLayers(eqx.Module):
    a: eqx.Module
    b: eqx.Module

    def __call__(self, x):
        return jax.lax.cond(jnp.sum(x) > 0, lambda x: self.a(x), lambda x: self.b(x), x)


class SwitchLayers(eqx.Module):
    a: eqx.Module
    b: eqx.Module

    def __call__(self, x):
        index = (jnp.sum(x) > 0).astype(jnp.int32)
        return jax.lax.switch(index, [lambda x: self.a(x), lambda x: 2.0 * self.b(x), lambda x: x], x)


@pytest.mark.parametrize("passes", PIPELINES)
@pytest.mark.parametrize("wrapper", [CondLayers, SwitchLayers])
def test_layer_under_cond_or_switch(passes, wrapper):
    k1, k2 = jax.random.split(KEY)
    model = wrapper(layers.mttt_linear(dim=6, heads=2, key=k1, steps=2), layers.mttt_mlp(dim=6, heads=2, key=k2))
    x = jax.random.normal(KEY, (5, 6))
    for sign in (1.0, -1.0):  # both branches, each traced for the same shapes
        xs = sign * jnp.abs(x)
        assert_same_program(model, xs, passes)


class AddNegOnes(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return self.w * x + (-jnp.ones_like(x))


@pytest.mark.parametrize("passes", [["simplify"], "default"])
def test_add_a_negated_splat(passes):
    m, x = AddNegOnes(jnp.full(3, 2.0)), jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(tc.compile(m, x, passes=passes)(x), [1.0, 3.0, 5.0])
    assert_same_program(m, x, passes)


def test_pass_option_of_the_wrong_type_is_a_spec_error():
    layer = layers.mttt_linear(dim=4, heads=1, key=KEY)
    with pytest.raises(tc.SpecError, match="unroll.*max_steps"):
        tc.compile(layer, jnp.ones((3, 4)), passes=[("unroll", {"max_steps": "x"})])


# ------------------------------------------------------------------ traps
def test_zero_init_with_a_non_zero_learner_is_a_spec_error():
    learner = tc.learners.Linear(4, key=KEY)  # W ~ N(0, 1/4): not zero
    with pytest.raises(tc.SpecError, match="learned"):
        tc.TTTLayer(4, 1, learner, init="zero", key=KEY)
    tc.TTTLayer(4, 1, tc.learners.Linear(4), init="zero", key=KEY)  # zeros: fine
    tc.TTTLayer(4, 1, learner, init="learned", key=KEY)  # learned W0: fine


class GatedLinear(eqx.Module):
    """f(z; W) = gate * (W z): the gate is marked as an outer parameter below."""

    W: jax.Array
    gate: jax.Array

    def __call__(self, z):
        return self.gate * (self.W @ z)


@pytest.mark.parametrize("passes", PIPELINES)
def test_outer_parameter_of_a_learner(passes):
    learner = GatedLinear(jnp.zeros((3, 3)), jnp.linspace(0.5, 1.5, 3))
    layer = tc.TTTLayer(
        6, 2, learner, init="zero", outer=lambda f: f.gate, inner=tc.Inner(steps=2, optimizer=optax.sgd(0.5)), key=KEY
    )
    x = jax.random.normal(KEY, (5, 6))
    assert_same_program(layer, x, passes)
    # the gate is trained by the outer loop (a non-zero gradient), and changing it changes the output
    g = eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x))))(tc.compile(layer, x, passes=passes))
    assert float(jnp.max(jnp.abs(g.params.learner_outer.gate))) > 0
    other = eqx.tree_at(lambda m: m.learner_outer.gate, layer, 2 * layer.learner_outer.gate)
    assert float(jnp.max(jnp.abs(other(x) - layer(x)))) > 1e-6
