"""The peer TTT layers of test-time-training/ttt-lm-jax (`ttt/models/ttt_layer.py`: `TTTLinearBase`,
`TTTLinear`, `TTTMLPBase`, `TTTMLP`), loaded from a checkout the caller names.

None of the peer's code is part of this project: `load_peer(checkout)` imports the peer's
`ttt/models/ttt_layer.py` unchanged from a checkout outside this repository (e.g.
`git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/ttt-lm-jax`, or a clone of
https://github.com/test-time-training/ttt-lm-jax).  It needs flax (`pip install -e '.[released]'`).

That file imports `with_sharding_constraint` and `get_gradient_checkpoint_policy` from
`ttt.infra.jax_utils`, whose real module pulls in torch, transformers, wandb and ml_collections; this
module puts small stand-ins in `sys.modules` instead (stub `ttt`, `ttt.infra`, `ttt.models` packages
and a `ttt.infra.jax_utils` whose sharding constraint is the identity: we run on one device without a
mesh, where the peer's own helper is a no-op too).  One JAX API the peer calls is gone from the JAX
this project uses: `jnp.clip(x, a_min=...)` (keywords `a_min` / `a_max`, deprecated in JAX 0.4.27 and
removed since; now `min` / `max`, same meaning).  The loaded module's global `jnp` is therefore a thin
view of `jax.numpy` whose `clip` also accepts the old keywords (`_jnp_compat`); the file itself is not
edited and nothing else changes.

The rest builds a layer from a small config (`peer_config`), initialises it, moves its parameters off
their initial values (`perturb`) and runs it (`apply_first`), as `tests/fixtures/make_ttt_lm_jax.py`
does to write the `ttt_lm_jax_*.npz` fixtures.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

#: Our name for each peer layer class.
KINDS = {"linear_base": "TTTLinearBase", "linear": "TTTLinear", "mlp_base": "TTTMLPBase", "mlp": "TTTMLP"}

#: `remat_mini_batch_group_size` of the peer's configs (125M ... 1.3B, `ttt/models/model.py`).
PEER_REMAT_GROUP = 4

_LAYER_PATH = Path("ttt") / "models" / "ttt_layer.py"


# --------------------------------------------------------------------------- importing the peer
def _stub_package(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package with nothing on disk: only the stubs below are importable from it
    return mod


def _stub_jax_utils() -> types.ModuleType:
    mod = types.ModuleType("ttt.infra.jax_utils")
    mod.__doc__ = "Stand-in for the peer's ttt/infra/jax_utils.py (one device, no mesh)."

    def with_sharding_constraint(x, partition_specs):
        """Identity: without a mesh naming the spec's axes the peer's helper applies no constraint either."""
        del partition_specs
        return x

    def get_gradient_checkpoint_policy(name):
        """The peer's mapping of names to `jax.checkpoint_policies`."""
        return {
            "everything_saveable": jax.checkpoint_policies.everything_saveable,
            "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
            "checkpoint_dots": jax.checkpoint_policies.checkpoint_dots,
            "checkpoint_dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        }[name]

    mod.with_sharding_constraint = with_sharding_constraint
    mod.get_gradient_checkpoint_policy = get_gradient_checkpoint_policy
    return mod


def _jnp_compat() -> types.ModuleType:
    """`jax.numpy` with a `clip` that also takes the removed `a_min` / `a_max` keywords (the peer's
    `get_eta` calls `jnp.clip(token_idx, a_min=0.0)`)."""

    class JnpCompat(types.ModuleType):
        def __getattr__(self, name):
            return getattr(jnp, name)

    view = JnpCompat("jax.numpy")

    def clip(arr=None, /, min=None, max=None, *, a_min=None, a_max=None):
        return jnp.clip(arr, min=a_min if min is None else min, max=a_max if max is None else max)

    view.clip = clip
    return view


def load_peer(checkout: str | Path) -> types.ModuleType:
    """The peer's `ttt.models.ttt_layer` module, imported unchanged from `checkout` (a checkout of
    test-time-training/ttt-lm-jax), with stand-ins for the `ttt` packages and `ttt.infra.jax_utils`."""
    path = Path(checkout) / _LAYER_PATH
    if not path.is_file():
        raise SystemExit(
            f"{checkout}: no {_LAYER_PATH} there; pass a checkout of https://github.com/test-time-training/ttt-lm-jax"
        )
    try:
        import flax  # noqa: F401
    except ImportError:
        raise SystemExit("the peer layer needs flax: pip install -e '.[released]'") from None
    for name in ("ttt", "ttt.infra", "ttt.models"):
        sys.modules.setdefault(name, _stub_package(name))
    sys.modules.setdefault("ttt.infra.jax_utils", _stub_jax_utils())
    spec = importlib.util.spec_from_file_location("ttt.models.ttt_layer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ttt.models.ttt_layer"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("ttt.models.ttt_layer", None)
        raise
    module.jnp = _jnp_compat()  # read at call time by the peer's functions: see the module docstring
    return module


# --------------------------------------------------------------------------- config and layer
def _remat_group(n_mini_batch: int, want: int = PEER_REMAT_GROUP) -> int:
    """The largest divisor of `n_mini_batch` not above `want` (the peer's scan reshapes the mini-batches
    into groups of this size)."""
    return max(g for g in range(1, min(want, n_mini_batch) + 1) if n_mini_batch % g == 0)


def peer_config(
    *,
    width: int,
    heads: int,
    mini_batch_size: int,
    n: int,
    base_lr: float = 1.0,
    rope_theta: float = 10000.0,
    conv_width: int = 4,
    remat_group: int | None = None,
    initializer_range: float = 0.02,
) -> types.SimpleNamespace:
    """The config fields the peer layer reads (`TTTBase.setup`, `get_eta`, `ttt`, the conv setup and
    `__call__`, which sets `output_ttt_stats` itself).  `remat_group` defaults to the peer's 4, or the
    largest divisor of n / mini_batch_size below it."""
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    if n % mini_batch_size:
        raise ValueError(f"n {n} is not a multiple of mini_batch_size {mini_batch_size}")
    n_mb = n // mini_batch_size
    group = _remat_group(n_mb) if remat_group is None else remat_group
    if n_mb % group:
        raise ValueError(f"remat_group {group} does not divide n / mini_batch_size = {n_mb}")
    return types.SimpleNamespace(
        hidden_size=width,
        num_attention_heads=heads,
        mini_batch_size=mini_batch_size,
        max_sequence_length=n,
        rope_theta=rope_theta,
        initializer_range=initializer_range,
        ttt_base_lr=base_lr,
        remat_mini_batch_group_size=group,
        remat_conv="",
        conv_width=conv_width,
        output_ttt_stats=False,
    )


def build(module: types.ModuleType, kind: str, config: types.SimpleNamespace):
    """The peer layer `KINDS[kind]` (float32) for `config`."""
    return getattr(module, KINDS[kind])(config=config, dtype=jnp.float32, param_dtype=jnp.float32)


def _positions(x):
    return jnp.arange(x.shape[1])[None]


def init_params(layer, x, key) -> dict:
    """The layer's initial parameters for inputs like `x` (1, n, width)."""
    return layer.init(key, x, position_ids=_positions(x))["params"]


def apply_first(layer, params, x):
    """The layer's output (its first return value) at `params` for `x` (1, n, width), positions 0..n-1."""
    return layer.apply({"params": params}, x, position_ids=_positions(x))[0]


# --------------------------------------------------------------------------- parameters
def _names(params) -> dict[str, tuple]:
    from flax import traverse_util

    return {"/".join(k): k for k in traverse_util.flatten_dict(params)}


def flat(params) -> dict[str, np.ndarray]:
    """The parameters as numpy arrays under "/"-joined names (`flax.traverse_util.flatten_dict(sep="/")`).
    Some peer parameters are single flax params whose names hold a "/" themselves (`ttt_norm/scale`,
    `learnable_ttt_lr/kernel`, ...), so the names do not tell the nesting: rebuild a tree by matching a
    template's names, not by splitting."""
    from flax import traverse_util

    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def perturb(params, key, scale: float = 0.1):
    """Every parameter moved off its initial value (unit LayerNorm scales, zero biases, zero token-index
    offsets), so every term of the layer counts in a value check: `p + scale * normal(fold_in(key, i))`,
    i the parameter's position in the sorted "/"-joined names.  In addition the `learnable_token_idx`
    offset's entry at 0-based position 5 (where the mini-batch has more than 5 tokens) is set to -1.0, so
    that the peer's `clip(1 / (i + 1) + offset, 0)` clips there (1/6 - 1 < 0).  The tree keeps its form."""
    from flax import traverse_util

    leaves = traverse_util.flatten_dict(params)
    names = _names(params)
    out = {}
    for i, name in enumerate(sorted(names)):
        k = names[name]
        v = leaves[k]
        v = v + scale * jax.random.normal(jax.random.fold_in(key, i), v.shape, v.dtype)
        if name == "learnable_token_idx" and v.shape[0] > 5:
            v = v.at[5].set(-1.0)
        out[k] = v
    return traverse_util.unflatten_dict(out)
