"""Outer-loop training of the causal LM (`models.lm`) on the embedded text and on MQAR, with optax.

Both tasks minimise the masked next-token cross-entropy

    L(theta) = sum_{b,i} m_{b,i} CE(logits_theta(x_b)_i, y_{b,i}) / sum_{b,i} m_{b,i}

with AdamW (linear warm-up, cosine decay, global-norm clipping).  The model is traced once with
`tc.compile(model, ids, passes=config.passes)` (every TTT layer's inner loop goes through the
pass pipeline) and the outer loop trains the compiled program's parameters in one jitted step.
Configs are the frozen dataclasses below (`TEXT_CONFIGS`, `MQAR_CONFIGS`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ttt_compile as tc
import ttt_compile.passes.dual_form  # noqa: F401  (registers the pass)
from ttt_compile import mqar, text
from ttt_compile.models import layers
from ttt_compile.models.causal import causal_linear_attention
from ttt_compile.models.lm import CausalLM, causal_lm

#: The default pipeline with the dual form placed before the passes that consume the loop.
DUAL_PIPELINE = ("remat", "dual_form", "sgd_batch", "unroll", "fold_zero_init", "simplify", "cse", "dce",
                 "lower")
#: What the training runs use: the dual form, the zero-W0 fold and lowering to one scan (no
#: rematerialisation: these models are small, so storing the loop costs little and saves recompute).
TRAIN_PIPELINE = ("dual_form", "fold_zero_init", "simplify", "dce", "lower")

MIXERS = ("linear_attention", "linear_attention_elu1", "mttt_linear", "mttt_mlp", "softmax")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """One causal-LM training run.

    mixer      linear_attention | linear_attention_elu1 | mttt_linear | mttt_mlp | softmax
    chunk      b of the online TTT loop (1: token by token, T = n) and the linear-attention chunk
    inner_lr   eta of the TTT inner loop (optax.sgd(eta)), in eq. 1's units: the LM mixers use the
               paper's parametrisation (`parametrisation="paper"`), the one these rows were tuned in
    eta        the TTT layers' step size: "fixed" (inner_lr), or learned "per_head" / "per_token"
               (tc.Inner(eta=..., eta_base=2 * inner_lr), so that it starts at inner_lr)
    """

    mixer: str = "mttt_linear"
    chunk: int = 16
    inner_lr: float = 0.1
    eta: str = "fixed"
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 128
    seq_len: int = 128
    prev_token: bool = False
    batch: int = 16
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    passes: tuple = TRAIN_PIPELINE
    eval_windows: int = 64

    def __post_init__(self):
        if self.mixer not in MIXERS:
            raise tc.SpecError(f"LMConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.eta not in ("fixed", "per_head", "per_token"):
            raise tc.SpecError(f"LMConfig.eta must be 'fixed', 'per_head' or 'per_token', got {self.eta!r}")
        if self.seq_len % self.chunk:
            raise tc.SpecError(f"LMConfig.chunk={self.chunk} must divide seq_len={self.seq_len}")


@dataclasses.dataclass(frozen=True)
class MQARConfig(LMConfig):
    """An MQAR run: the LM config plus the task (pairs N, vocabulary V; seq_len is L)."""

    num_pairs: int = 8
    vocab: int = 64
    prev_token: bool = True
    eval_examples: int = 256

    @property
    def spec(self) -> mqar.MQARSpec:
        return mqar.MQARSpec(self.seq_len, self.num_pairs, self.vocab)


TEXT_CONFIGS: dict[str, LMConfig] = {
    "text_linear_attention": LMConfig(mixer="linear_attention"),
    "text_mttt_linear": LMConfig(mixer="mttt_linear"),
    "text_mttt_mlp": LMConfig(mixer="mttt_mlp"),
}
MQAR_CONFIGS: dict[str, MQARConfig] = {
    "mqar_linear_attention": MQARConfig(mixer="linear_attention"),
    "mqar_mttt_linear": MQARConfig(mixer="mttt_linear"),
    "mqar_mttt_mlp_T1": MQARConfig(mixer="mttt_mlp", chunk=1),
    "mqar_mttt_mlp": MQARConfig(mixer="mttt_mlp"),
    "mqar_softmax": MQARConfig(mixer="softmax"),
}


# --------------------------------------------------------------------------- model
def mixer_factory(config: LMConfig) -> Callable[..., eqx.Module]:
    """factory(dim=, heads=, key=) for the config's mixer (all causal)."""
    name, b, eta = config.mixer, config.chunk, config.inner_lr
    ttt = dict(batching="online", chunk=b, parametrisation="paper", lr=eta)
    if config.eta != "fixed":       # the learned gate starts at eta_base / 2 = inner_lr; optax.sgd(1) applies it
        ttt.update(lr=1.0, eta=config.eta, eta_base=2 * eta)
    if name.startswith("linear_attention"):
        fm = "elu1" if name.endswith("elu1") else "identity"
        return lambda **kw: causal_linear_attention(chunk=b, feature_map=fm, **kw)
    if name == "mttt_linear":
        return lambda **kw: layers.mttt_linear(**ttt, **kw)
    if name == "mttt_mlp":
        return lambda **kw: layers.mttt_mlp(**ttt, **kw)
    return lambda **kw: layers.self_attention(causal=True, **kw)


def build(config: LMConfig, vocab: int, key) -> CausalLM:
    return causal_lm(vocab=vocab, width=config.width, depth=config.depth, heads=config.heads,
                     mlp_dim=config.mlp_dim, max_len=config.seq_len, mixer=mixer_factory(config),
                     prev_token=config.prev_token, key=key)


def compile_lm(model: CausalLM, config: LMConfig) -> tc.Compiled:
    """The model traced on one sequence of seq_len ids and run through `config.passes`."""
    return tc.compile(model, jnp.zeros(config.seq_len, jnp.int32), passes=list(config.passes))


_PROGRAMS: dict = {}
_STEPS: dict = {}


def program_for(config: LMConfig, vocab: int) -> tc.Compiled:
    """The compiled LM with the initial parameters of `config.seed`.  Configs that differ only in the
    seed share one traced program (only its parameters differ), so their jitted steps compile once."""
    model = build(config, vocab, jax.random.PRNGKey(config.seed))
    key = (dataclasses.replace(config, seed=0), vocab)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = (compile_lm(model, config), eqx.partition(model, eqx.is_inexact_array)[1])
        return _PROGRAMS[key][0]
    # the template's tree structure (its static metadata, e.g. the optax closures, stays the same),
    # this seed's leaves: the jitted steps see an identical static part and do not recompile
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(_PROGRAMS[key][0].params),
                                          jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))
    return eqx.tree_at(lambda c: c.params, _PROGRAMS[key][0], params)


def source_model(config: LMConfig, vocab: int, program: tc.Compiled) -> CausalLM:
    """The CausalLM whose parameters are the (trained) program's: for `step` / `decode` / `generate`."""
    key = (dataclasses.replace(config, seed=0), vocab)
    if key not in _PROGRAMS:
        raise ValueError("source_model: no program was compiled for this config in this process; call "
                         "program_for(config, vocab) (or train_text / train_mqar) first")
    return eqx.combine(program.params, _PROGRAMS[key][1])


def step_for(config: LMConfig):
    """(optimizer, jitted step) for the config's outer-loop recipe (shared by equal recipes)."""
    key = (config.lr, config.warmup, config.steps, config.weight_decay, config.clip)
    if key not in _STEPS:
        optimizer = make_optimizer(config)
        _STEPS[key] = (optimizer, make_step(optimizer))
    return _STEPS[key]


# --------------------------------------------------------------------------- loss and steps
def masked_ce(program: Callable, inputs, targets, mask) -> jax.Array:
    """Mean next-token cross-entropy over the masked positions of a batch."""
    logits = jax.vmap(program)(inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = mask.astype(ce.dtype)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_optimizer(config: LMConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup, max(config.steps, config.warmup + 1))
    return optax.chain(optax.clip_by_global_norm(config.clip),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def make_step(optimizer: optax.GradientTransformation):
    """(program, opt_state, batch) -> (program', opt_state', loss): one jitted AdamW step."""
    @eqx.filter_jit
    def step(program, opt_state, inputs, targets, mask):
        loss, grads = eqx.filter_value_and_grad(masked_ce)(program, inputs, targets, mask)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(program, eqx.is_inexact_array))
        return eqx.apply_updates(program, updates), opt_state, loss
    return step


@eqx.filter_jit
def _logits(program, inputs):
    return jax.vmap(program)(inputs)


_masked_ce = eqx.filter_jit(masked_ce)


def _fit(config: LMConfig, program, next_batch: Callable[[int], dict], log_every: int, log) -> tuple[Any, dict]:
    optimizer, step = step_for(config)
    opt_state = optimizer.init(eqx.filter(program, eqx.is_inexact_array))
    losses, t0, t_first = [], time.perf_counter(), None
    for i in range(config.steps):
        b = next_batch(i)
        program, opt_state, loss = step(program, opt_state, b["inputs"], b["targets"], b["mask"])
        if i == 0:
            loss.block_until_ready()
            t_first = time.perf_counter()
        if i % log_every == 0 or i == config.steps - 1:
            losses.append((i, float(loss)))
            if log:
                log(f"  step {i:4d}  loss {float(loss):.4f}")
        if i % log_every == 0 and not math.isfinite(float(loss)):
            raise FloatingPointError(f"{config.mixer}: loss is {float(loss)} at step {i}")
    jax.block_until_ready(program)
    t_end = time.perf_counter()
    timing = {"compile_and_first_step_s": t_first - t0,
              "steps_per_s": (config.steps - 1) / max(t_end - t_first, 1e-9)}
    return program, {"losses": losses, **timing}


# --------------------------------------------------------------------------- tasks
def train_text(config: LMConfig, *, log_every: int = 50, log=print) -> dict:
    """Character-level LM on the embedded (synthetic) corpus: returns losses, validation loss,
    perplexity per character exp(L_val), bits per character L_val / ln 2, and the trained program."""
    corpus = text.load()
    vocab = text.CharVocab.of(corpus)
    train_ids, val_ids = text.split(vocab.encode(corpus))
    program = program_for(config, vocab.size)
    windows = text.windows(train_ids, config.seq_len, config.batch, config.seed)

    def next_batch(_):
        w = next(windows)
        return {"inputs": w[:, :-1], "targets": w[:, 1:], "mask": np.ones(w[:, 1:].shape, bool)}

    program, out = _fit(config, program, next_batch, log_every, log)
    val = text.eval_windows(val_ids, config.seq_len, config.eval_windows)
    val = val[: len(val) // 16 * 16]                          # whole batches of 16: one compiled shape
    ces = [float(_masked_ce(program, v[:, :-1], v[:, 1:], np.ones(v[:, 1:].shape, bool)))
           for v in np.split(val, len(val) // 16)]
    val_loss = float(np.mean(ces))
    return {"config": dataclasses.asdict(config), "vocab": vocab.size,
            "params": int(sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(program, eqx.is_inexact_array)))),
            "val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_bpc": val_loss / math.log(2), **out,
            "program": program}


def train_mqar(config: MQARConfig, *, log_every: int = 100, log=None) -> dict:
    """Train on fresh MQAR batches; returns the recall accuracy on held-out examples (and the program)."""
    spec = config.spec
    program = program_for(config, spec.vocab)
    stream = mqar.batches(config.seed, config.batch, spec)
    program, out = _fit(config, program, lambda _: next(stream), log_every, log)
    test = mqar.batch((10_000 + config.seed,), config.eval_examples, spec)
    logits = np.concatenate([np.asarray(_logits(program, test["inputs"][i:i + 64]))
                             for i in range(0, config.eval_examples, 64)])
    return {"config": dataclasses.asdict(config), "accuracy": mqar.accuracy(logits, test["targets"], test["mask"]),
            **out, "program": program}


__all__ = ["LMConfig", "MQARConfig", "TEXT_CONFIGS", "MQAR_CONFIGS", "DUAL_PIPELINE", "TRAIN_PIPELINE",
           "build", "compile_lm", "program_for", "step_for", "source_model", "masked_ce", "make_step", "train_text", "train_mqar", "mixer_factory"]
