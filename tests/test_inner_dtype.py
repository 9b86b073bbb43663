"""Inner.dtype: the inner loop in bfloat16 ("bfloat16": fast weights, gradients, updates and matmuls;
"mixed": f32 fast weights, bf16 matmuls), validated against the float32 program.

Tolerances are relative errors ||a - b|| / ||b|| (outputs y = layer(x); the gradient of
sum(sin(layer(x))) with respect to all outer parameters, concatenated) of the compiled bf16
program against the compiled float32 program (default passes), d = 64, H = 4, n = 64, x ~ N(0, 1).
Measured on this CPU (2026-12-01, presets in the released parametrisation; "bfloat16" / "mixed"):

| layer | output | gradient |
|---|---|---|
| MTTT-Linear, T=1 | 4.1e-3 / 4.1e-3 | 6.5e-4 / 6.5e-4 |
| MTTT-MLP, T=1 | 6.1e-3 / 5.5e-3 | 5.1e-3 / 4.8e-3 |
| MTTT-MLP, SGD T=4 | 7.2e-3 / 6.3e-3 | 7.8e-3 / 7.9e-3 |
| MTTT-Linear online, chunk 16, lr 0.1 | 5.7e-3 / 5.4e-3 | 2.8e-3 / 2.7e-3 |

bf16 has an 8-bit mantissa (unit roundoff 3.9e-3), so outputs and gradients agree to about two
roundoffs. The bound below, 2e-2, is 2.5 times the largest measured figure.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import ttt_compile as tc
from ttt_compile.ir.primitive import info, ttt_loop_p
from ttt_compile.models import layers

D, H, N = 64, 4, 64
CASES = {  # name -> (preset, options, output bound, gradient bound)
    "mttt_linear": ("mttt_linear", {}, 2e-2, 2e-2),
    "mttt_mlp_sgd4": ("mttt_mlp", {"steps": 4, "batching": "sgd"}, 2e-2, 2e-2),
    "mttt_linear_online16": ("mttt_linear", {"batching": "online", "chunk": 16, "lr": 0.1}, 2e-2, 2e-2),
}
SLOW = {"mttt_mlp_sgd4", "mttt_linear_online16"}  # ~1-2 min each on the shared 2-core machine


def _flat(tree):
    return jnp.concatenate([a.ravel().astype(jnp.float32) for a in jax.tree_util.tree_leaves(tree)])


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@eqx.filter_jit
def _value_and_grads(model, x):
    """(layer(x), gradient of sum(sin(layer(x))) w.r.t. the float leaves), one XLA program."""
    p, s = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(p, s)(x), jax.grad(lambda p: jnp.sum(jnp.sin(eqx.combine(p, s)(x))))(p)


def _loop(closed):
    """The first ttt_loop equation of a traced program (looking inside sub-jaxprs)."""

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive is ttt_loop_p:
                return eqn
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                found = find(getattr(sub, "jaxpr", sub))
                if found is not None:
                    return found
        return None

    return find(closed.jaxpr)


def _dtypes(prog):
    """(dtypes of the loop's carry, dtypes of the loop body's matmul operands) in the traced program."""
    eqn = _loop(prog.stages[0][1])
    li = info(eqn.params)
    carry = {str(v.aval.dtype) for v in eqn.invars[li.num_consts : li.num_consts + li.num_carry]}
    dots = {str(v.aval.dtype) for e in li.body.jaxpr.eqns if e.primitive.name == "dot_general" for v in e.invars}
    return carry, dots


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_bf16_inner_loop_matches_the_f32_program_within_tolerance(case):
    preset, options, y_tol, g_tol = CASES[case]
    key, x = jax.random.PRNGKey(0), jax.random.normal(jax.random.PRNGKey(1), (N, D))
    make = layers.get(preset)
    y32, g32 = _value_and_grads(tc.compile(make(dim=D, heads=H, key=key, **options), x), x)
    expected = {"bfloat16": ({"bfloat16"}, {"bfloat16"}), "mixed": ({"float32"}, {"bfloat16"})}
    for mode, (carry, dots) in expected.items():
        layer = make(dim=D, heads=H, key=key, inner_dtype=mode, **options)
        prog = tc.compile(layer, x)
        assert _dtypes(prog) == (carry, dots), mode
        y, g = _value_and_grads(prog, x)
        assert y.dtype == jnp.float32  # the layer's output keeps its input's dtype
        assert 0 < _rel(y, y32) < y_tol, mode
        assert 0 < _rel(g, g32) < g_tol, mode
        assert _rel(eqx.filter_jit(layer)(x), y32) < y_tol, mode  # the uncompiled (reference) layer too


def test_float32_inner_loop_under_bf16_inputs_and_spec_errors():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (16, 16)).astype(jnp.bfloat16)
    layer = layers.mttt_linear(dim=16, heads=2, key=key, inner_dtype="float32")
    layer = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, layer)
    prog = tc.compile(layer, x)
    assert _dtypes(prog) == ({"float32"}, {"float32"})
    assert eqx.filter_jit(prog)(x).dtype == jnp.bfloat16
    with pytest.raises(tc.SpecError, match=r"Inner.dtype must be None, 'float32', 'bfloat16', 'mixed', got 'bf16'"):
        tc.Inner(dtype="bf16")
    with pytest.raises(tc.SpecError, match=r"non-parametric .* leave Inner.dtype=None"):
        tc.TTTLayer(16, 2, tc.learners.NadarayaWatson(), inner=tc.Inner(dtype="bfloat16"), key=key)


def test_compile_option_inner_dtype_overrides_every_layer_of_a_model():
    """tc.compile(model, x, inner_dtype=...) is the same program as building the layers with that
    Inner.dtype, also for TTT layers inside a model; errors name the fix."""
    key, x = jax.random.PRNGKey(0), jax.random.normal(jax.random.PRNGKey(1), (N, D))
    layer = layers.mttt_linear(dim=D, heads=H, key=key)
    built = tc.compile(layers.mttt_linear(dim=D, heads=H, key=key, inner_dtype="mixed"), x)
    option = tc.compile(layer, x, inner_dtype="mixed")
    assert str(option.jaxpr) == str(built.jaxpr)
    assert _dtypes(option) == ({"float32"}, {"bfloat16"})
    assert layer.inner.dtype is None  # the user's layer is not changed

    class Two(eqx.Module):
        a: tc.TTTLayer
        b: tc.TTTLayer

        def __call__(self, x):
            return self.b(self.a(x))

    model = Two(layer, layers.mttt_mlp(dim=D, heads=H, key=key))
    loops = []
    for eqn in tc.compile(model, x, inner_dtype="bfloat16", passes=[]).stages[0][1].jaxpr.eqns:
        if eqn.primitive is ttt_loop_p:
            li = info(eqn.params)
            loops.append({str(v.aval.dtype) for v in eqn.invars[li.num_consts : li.num_consts + li.num_carry]})
    assert loops == [{"bfloat16"}, {"bfloat16"}]
    with pytest.raises(
        tc.SpecError, match=r"inner_dtype must be None or one of 'float32', 'bfloat16', 'mixed', got 'fp8'"
    ):
        tc.compile(layer, x, inner_dtype="fp8")
    with pytest.raises(tc.SpecError, match=r"holds no parametric TTTLayer; drop inner_dtype"):
        tc.compile(layers.linear_attention(dim=D, heads=H, key=key), x, inner_dtype="bfloat16")
