"""The scan form of chunked causal linear attention computes what the prefix-sum form computes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from ttt_compile.layer.spec import SpecError
from ttt_compile.models.causal import causal_linear_attention


@pytest.mark.parametrize("feature_map", ["identity", "elu1"])
def test_scan_form_equals_prefix_form_values_and_grads(feature_map):
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(0)
        x = jax.random.normal(key, (32, 8), jnp.float64)
        scan, prefix = (
            causal_linear_attention(dim=8, heads=2, key=key, chunk=8, feature_map=feature_map, form=f)
            for f in ("scan", "prefix")
        )
        scan, prefix = (
            jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, m) for m in (scan, prefix)
        )
        assert jnp.allclose(scan(x), prefix(x), rtol=1e-12, atol=1e-12)
        grads = [eqx.filter_grad(lambda m: jnp.sum(jnp.sin(m(x))))(m) for m in (scan, prefix)]
        for a, b in zip(*(jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array)) for g in grads)):
            assert jnp.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_unknown_form_is_a_spec_error():
    with pytest.raises(SpecError, match="form must be one of"):
        causal_linear_attention(dim=8, heads=2, key=jax.random.PRNGKey(0), form="cumsum")
