"""Beyond ttt-lm-jax: a learner its hand-written dual form cannot run, declared, with the dual form derived.

    f(z; W) = z + LN(W3 gelu(W2 gelu(W1 z + b1) + b2) + b3)        (three layers, hidden 4 d_h)

ttt-lm-jax wrote the mini-batch dual form by hand for exactly two learners (TTT-Linear, TTT-MLP).  Here the
learner is an ordinary Equinox module inside the same TTT-MLP layer (multi-view task, learned 1/i factor,
RoPE, causal convolutions, output norm and gate); `dual_form` finds its three matrices on its own.

Run: `python examples/deep_residual_learner.py` prints what `dual_form` did, the float64 validation
against the uncompiled layer (values and outer gradients) and the training-step time beside TTT-MLP's
(interleaved rounds, this machine).
"""

import equinox as eqx
import jax
from jaxtyping import Array, Float

import ttt_compile as tc
from ttt_compile.layer.host_init import normal, zeros
from ttt_compile.layer.learners import ResidualLN
from ttt_compile.layer.ttt_lm_jax import ttt_lm_jax_layer


class MLP3(eqx.Module):
    """The body W3 gelu(W2 gelu(W1 z + b1) + b2) + b3 (hidden width 4 d)."""

    W1: Float[Array, "h d"]
    b1: Float[Array, " h"]
    W2: Float[Array, "h h"]
    b2: Float[Array, " h"]
    W3: Float[Array, "d h"]
    b3: Float[Array, " d"]

    def __init__(self, d: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        h = 4 * d
        self.W1, self.b1 = normal(k1, (h, d), 0.02), zeros((h,))
        self.W2, self.b2 = normal(k2, (h, h), 0.02), zeros((h,))
        self.W3, self.b3 = normal(k3, (d, h), 0.02), zeros((d,))

    def __call__(self, z):
        a = jax.nn.gelu(self.W1 @ z + self.b1)
        a = jax.nn.gelu(self.W2 @ a + self.b2)
        return self.W3 @ a + self.b3


def make_layer(dim: int = 64, heads: int = 4, *, chunk: int = 16, key) -> tc.TTTLayer:
    """TTT-MLP's layer (`ttt_lm_jax_layer(kind="mlp")`) with the three-layer residual learner."""
    kl, kd = jax.random.split(key)
    layer = ttt_lm_jax_layer(kind="mlp", width=dim, heads=heads, mini_batch_size=chunk, key=kd)
    learner = ResidualLN(MLP3(dim // heads, key=kl), dim // heads)
    return tc.TTTLayer(
        dim,
        heads,
        learner,
        init="learned",
        outer=ResidualLN.outer,
        outer_per_head=True,
        task=layer.task,
        inner=layer.inner,
        sequence=layer.sequence,
        readout=layer.readout,
        key=kd,
    )


def main():
    from ttt_compile.benchmarks import timing

    with jax.enable_x64(True):
        layer = make_layer(dim=16, heads=2, chunk=4, key=jax.random.PRNGKey(0))
        x = jax.random.normal(jax.random.PRNGKey(1), (16, 16))
        prog = tc.compile(layer, x, passes="default")
        print([n for stage, ns in prog.notes if stage == "dual_form" for n in ns])
        print("float64 validation:", tc.validate.compare(layer, prog, x))

    n, dim, heads = 1024, 256, 4
    x = jax.random.normal(jax.random.PRNGKey(1), (1, n, dim))
    progs = {
        "MLP3 learner": tc.compile(make_layer(dim, heads, key=jax.random.PRNGKey(0)), x[0]),
        "TTT-MLP": tc.compile(
            ttt_lm_jax_layer(kind="mlp", width=dim, heads=heads, mini_batch_size=16, key=jax.random.PRNGKey(0)), x[0]
        ),
    }
    steps = {name: timing.train_step(p) for name, p in progs.items()}
    times = timing.interleaved({name: (lambda s=s: s(x)) for name, s in steps.items()}, reps=7, clusters=[list(steps)])
    print(
        f"training step, n={n}, d={dim}, H={heads}, b=16: MLP3 / TTT-MLP = "
        f"{timing.ratio(times['MLP3 learner'], times['TTT-MLP']):.2f} "
        f"(TTT-MLP {1e3 * timing.median(times['TTT-MLP']):.1f} ms)"
    )


if __name__ == "__main__":
    main()
