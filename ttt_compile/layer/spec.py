"""The declarative side of an inner loop: which task, how many steps, which optimizer.

These are small frozen records validated at construction: a bad field raises `SpecError`
naming the field and the fix, never a silent wrong answer later inside a trace.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import optax

Batching = Literal["full", "sgd", "online"]
Init = Literal["zero", "learned"]
Normalisation = Literal["paper", "released"]
StepSizeKind = Literal["fixed", "per_head", "per_token"]
ChunkFactor = Literal["none", "inverse", "learned"]
InnerDtype = Literal["float32", "bfloat16", "mixed"]
#: Inner.dtype -> (dtype of the fast weights W, their gradients and updates; dtype of the inner
#: loop's matmul operands: W as the learner sees it, keys, queries, tokens, the decoder g).
INNER_DTYPES = {
    "float32": ("float32", "float32"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "mixed": ("float32", "bfloat16"),
}


class SpecError(ValueError):
    """A layer, learner or inner-loop spec that cannot be built; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """The paper's self-supervised task  l(W; X) = c/(2n) sum_i ||g(f(phi(x_i); W)) - x_i||^2.

    phi (corruption/key map) and psi (query map) take a token to d_h per head, g decodes d_h back
    to the token dimension d (each head reconstructs the whole token) and h maps the heads'
    outputs back to d.  `decoder_ln=True` is the paper's "Decoder LN": g(z) = LN(G z).

    normalisation  "paper": c = 1, eq. 1 as written.  "released": c = 1/d_h, the released code's
                   (test-time-training/mttt) mean over the n x d reconstructed elements times H;
                   a step size eta_released is eta = eta_released / d_h in eq. 1's units.
    bias           phi_k(x) = P_k x + p_k and psi_k(x) = Q_k x + q_k with per-head biases, and
                   g_k(z) = LN(G_k z + c) with one decoder bias c shared by the heads (released code).
    ln_per_head    the Decoder LN's scale and offset are per head (released code) instead of shared.
    ln_eps         the Decoder LN's epsilon (equinox's default 1e-5; flax's, the released code's, 1e-6).
    loss_form      how a full-batch or SGD inner step evaluates the loss (same function, different cost):
                   "gram" (default) folds the decoder into d_h dimensions once per head before the
                   loop (`inner_steps.fold_decoder`): each step then works with d_h x d_h Gram
                   matrices instead of decoding every token to d; "direct" decodes every token
                   (g(z) in R^d) in every step.  Equal in real arithmetic (sums reassociated).  "gram"
                   applies when the inner loop computes in float32 or wider; with Inner.dtype
                   "bfloat16"/"mixed" every token is decoded (the folded sums would lose the residual
                   to bf16 cancellation).

    `Reconstruction.released(decoder_ln=...)` is the released code's parametrisation.
    """

    decoder_ln: bool = False
    normalisation: Normalisation = "paper"
    bias: bool = False
    ln_per_head: bool = False
    ln_eps: float = 1e-5
    loss_form: str = "gram"

    def __post_init__(self):
        for name in ("decoder_ln", "bias", "ln_per_head"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"Reconstruction.{name} must be a bool, got {getattr(self, name)!r}")
        if self.normalisation not in ("paper", "released"):
            raise SpecError(
                "Reconstruction.normalisation must be 'paper' (eq. 1: 1/(2n) sum ||.||^2) or "
                f"'released' (eq. 1 / d_h, the released code's), got {self.normalisation!r}"
            )
        if not isinstance(self.ln_eps, (int, float)) or isinstance(self.ln_eps, bool) or not self.ln_eps > 0:
            raise SpecError(f"Reconstruction.ln_eps must be a positive float, got {self.ln_eps!r}")
        if self.loss_form not in ("gram", "direct"):
            raise SpecError(
                "Reconstruction.loss_form must be 'gram' (decoder folded to d_h dims once per head) "
                f"or 'direct' (every token decoded to d in every step), got {self.loss_form!r}"
            )

    @classmethod
    def released(cls, decoder_ln: bool = False) -> Reconstruction:
        """The released code's task: loss / d_h, per-head phi/psi biases, a shared decoder bias,
        a per-head Decoder LN with flax's epsilon 1e-6."""
        return cls(decoder_ln=decoder_ln, normalisation="released", bias=True, ln_per_head=True, ln_eps=1e-6)

    def scale(self, dh: int) -> float:
        """c in l = c/(2n) sum_i ||.||^2: 1 (paper) or 1/d_h (released)."""
        return 1.0 if self.normalisation == "paper" else 1.0 / dh


@dataclasses.dataclass(frozen=True)
class MultiView:
    """A multi-view task (Sun et al. 2024, TTT-Linear/MLP): three views of each token, no decoder.

        l(W; X) = c/(2n) sum_i eta_i || f(theta_K x_i; W) - theta_V x_i ||^2,   out_j = h(f(theta_Q x_j; W_T))

    theta_K (the training view) is the layer's `phi`, theta_Q (the test view) its `psi` and theta_V
    (the label view) its `target`, each a per-head projection d -> d_h; the layer has no decoder
    (`g` is None).  `normalisation`: "paper" (c = 1) or "released" (c = 1/d_h, as both released codes,
    test-time-training/mttt and ttt-lm-jax, divide the step by d_h).
    """

    normalisation: Normalisation = "paper"

    def __post_init__(self):
        if self.normalisation not in ("paper", "released"):
            raise SpecError(
                f"MultiView.normalisation must be 'paper' (c = 1) or 'released' (c = 1/d_h), got {self.normalisation!r}"
            )

    def scale(self, dh: int) -> float:
        """c in l = c/(2n) sum_i ||.||^2: 1 (paper) or 1/d_h (released)."""
        return 1.0 if self.normalisation == "paper" else 1.0 / dh


@dataclasses.dataclass(frozen=True)
class SequenceMaps:
    """Outer maps of keys and queries that see the sequence and the positions (applied in this order):

    shared_qk    one projection for keys and queries, theta_K = theta_Q = phi (ttt-lm-jax's `wq`); the
                 convolutions below still differ (`psi` is None)
    conv_width   w: a causal depthwise convolution over the sequence after the projection, one for the
                 keys and one for the queries, each with its own kernel and bias per channel:
                 u'_t = sum_{s=0}^{w-1} c_s * u_{t-w+1+s} + beta  (u_t = 0 for t < 0); None: none
    rope_theta   rotary position embedding on keys and queries per head (pairs of dims (2i, 2i+1) rotated
                 by p * rope_theta^(-2i/d_h) at position p); None: none
    rope_period  positions are taken mod this period (ttt-lm-jax: its mini-batch size b, so each chunk
                 sees positions 0..b-1); None: absolute positions 0..n-1
    """

    shared_qk: bool = False
    conv_width: int | None = None
    rope_theta: float | None = None
    rope_period: int | None = None

    def __post_init__(self):
        if not isinstance(self.shared_qk, bool):
            raise SpecError(f"SequenceMaps.shared_qk must be a bool, got {self.shared_qk!r}")
        if self.conv_width is not None and (
            not isinstance(self.conv_width, int) or isinstance(self.conv_width, bool) or self.conv_width < 1
        ):
            raise SpecError(f"SequenceMaps.conv_width must be None or a positive int, got {self.conv_width!r}")
        if self.rope_theta is not None and (
            not isinstance(self.rope_theta, (int, float))
            or isinstance(self.rope_theta, bool)
            or not self.rope_theta > 0
        ):
            raise SpecError(f"SequenceMaps.rope_theta must be None or a positive float, got {self.rope_theta!r}")
        if self.rope_period is not None:
            if not isinstance(self.rope_period, int) or isinstance(self.rope_period, bool) or self.rope_period < 1:
                raise SpecError(f"SequenceMaps.rope_period must be None or a positive int, got {self.rope_period!r}")
            if self.rope_theta is None:
                raise SpecError("SequenceMaps.rope_period needs rope_theta (there is no rotary embedding without it)")


@dataclasses.dataclass(frozen=True)
class Readout:
    """The output map h after the inner loop, o_j = [f(psi_k(x_j); W_T)]_k concatenated over the heads:

        h(o_j, x_j) = O (gate(x_j) * norm(o_j)) + b,   norm = LayerNorm over the H d_h dims (if `norm`),
                      gate(x) = gelu(W_g x) (if `gate`; gelu's tanh form), b the output bias (if `bias`).

    The default (no norm, no gate, a bias) is the paper's h(o) = sum_k O_k o_k + b."""

    norm: bool = False
    gate: bool = False
    bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("norm", "gate", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"Readout.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.norm_eps, (int, float)) or isinstance(self.norm_eps, bool) or not self.norm_eps > 0:
            raise SpecError(f"Readout.norm_eps must be a positive float, got {self.norm_eps!r}")


@dataclasses.dataclass(frozen=True)
class Inner:
    """How the fast weights W learn at test time.

    steps      T, the number of inner gradient steps (full, sgd).
    batching   "full": every step uses all n tokens;  "sgd": the n tokens are split into `steps`
               contiguous mini-batches of n/T, one step each;  "online": causal, chunks of `chunk`
               tokens, token t predicted with the weights after learning from tokens 1..t.
    chunk      b for batching="online": gradients of a chunk are taken at its starting weights and
               token t sums the updates of its chunk's tokens up to and including t.
    optimizer  any optax GradientTransformation; the paper uses plain GD, optax.sgd(eta) with eta=1.
    eta        a learned step size, an outer parameter of the layer that weights each token's loss in
               the gradient the optimizer receives (grad sum_i eta_i l_i; for optax.sgd(lr) the step
               is W <- W - lr sum_i eta_i grad l_i):
               "fixed": none (eta_i = 1);  "per_head": eta_k = eta_base * sigmoid(b_k), one learned
               b_k per head;  "per_token": eta_k(x_i) = eta_base * sigmoid(theta_k . x_i + b_k)
               (TTT-Linear/MLP's form, Sun et al. 2024).  theta_k and b_k start at 0 (eta = eta_base/2).
    eta_base   the largest step size the sigmoid gate allows.
    dtype      precision of the inner loop, whatever the layer's input dtype (its output keeps the
               input's dtype): None follows the arrays given (default); "float32"; "bfloat16": fast
               weights, their gradients, optimizer state and updates, and every matmul in bf16;
               "mixed": fast weights, gradients, optimizer state and updates in f32, the learner's
               and decoder's matmuls on bf16 copies (W cast to bf16 where it is used).
    chunk_factor  for batching="online": a per-position factor inside each chunk.  Token i (1-based within
               its chunk of b) reads W + update(a_i sum_{j<=i} grad l_j) and the chunk hands on
               W + update(a_b sum_j grad l_j):  "none": a_i = 1;  "inverse": a_i = 1/i;  "learned":
               a_i = max(1/i + o_i, 0) with a learned offset o (an outer parameter of the layer, `chunk_offset`,
               starting at 0; ttt-lm-jax's `learnable_token_idx`).
    token_chunk  c for batching "full"/"sgd": each step's loss sum_i l_i and the queries' outputs
               f(q_j; W_T) are evaluated c tokens at a time, each chunk rematerialised
               (jax.checkpoint under lax.scan/lax.map), so the outer backward pass stores per chunk
               only its inputs and keeps one chunk's learner activations live instead of n tokens'.
               The same math (sums reassociated by chunk); None (default): all tokens at once.
    """

    steps: int = 1
    batching: Batching = "full"
    optimizer: optax.GradientTransformation = dataclasses.field(default_factory=lambda: optax.sgd(1.0))
    chunk: int = 1
    eta: StepSizeKind = "fixed"
    eta_base: float = 1.0
    dtype: InnerDtype | None = None
    token_chunk: int | None = None
    chunk_factor: ChunkFactor = "none"

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise SpecError(f"Inner.steps must be a positive int, got {self.steps!r}")
        if self.batching not in ("full", "sgd", "online"):
            raise SpecError(f"Inner.batching must be 'full', 'sgd' or 'online', got {self.batching!r}")
        if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 1:
            raise SpecError(f"Inner.chunk must be a positive int, got {self.chunk!r}")
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise SpecError(
                "Inner.optimizer must be an optax.GradientTransformation, e.g. optax.sgd(1.0); "
                f"got {type(self.optimizer).__name__}"
            )
        if self.eta not in ("fixed", "per_head", "per_token"):
            raise SpecError(f"Inner.eta must be 'fixed', 'per_head' or 'per_token', got {self.eta!r}")
        if not isinstance(self.eta_base, (int, float)) or isinstance(self.eta_base, bool) or not self.eta_base > 0:
            raise SpecError(f"Inner.eta_base must be a positive float, got {self.eta_base!r}")
        if self.token_chunk is not None and (
            not isinstance(self.token_chunk, int) or isinstance(self.token_chunk, bool) or self.token_chunk < 1
        ):
            raise SpecError(f"Inner.token_chunk must be None or a positive int, got {self.token_chunk!r}")
        if self.token_chunk is not None and self.batching == "online":
            raise SpecError(
                "Inner.token_chunk is for batching 'full' or 'sgd'; an online loop already runs in "
                "chunks of Inner.chunk tokens"
            )
        if self.chunk_factor not in ("none", "inverse", "learned"):
            raise SpecError(f"Inner.chunk_factor must be 'none', 'inverse' or 'learned', got {self.chunk_factor!r}")
        if self.chunk_factor != "none" and self.batching != "online":
            raise SpecError(
                f"Inner.chunk_factor={self.chunk_factor!r} weighs the tokens of an online chunk; it needs "
                "batching='online'"
            )
        if self.dtype is not None and self.dtype not in INNER_DTYPES:
            raise SpecError(f"Inner.dtype must be None, {', '.join(map(repr, INNER_DTYPES))}, got {self.dtype!r}")

    def __hash__(self):  # optax transformations hold functions: hash by identity of the optimizer
        return hash(
            (
                self.steps,
                self.batching,
                self.chunk,
                id(self.optimizer),
                self.eta,
                self.eta_base,
                self.dtype,
                self.token_chunk,
                self.chunk_factor,
            )
        )

    def dtypes(self) -> tuple[str, str] | None:
        """(fast-weight dtype, matmul dtype) of `dtype`, or None when the loop follows its inputs."""
        return None if self.dtype is None else INNER_DTYPES[self.dtype]

    def blocks(self, n: int) -> tuple[int, int]:
        """(number of loop steps, tokens per step) for a sequence of n tokens; checks divisibility."""
        if self.batching == "full":
            return self.steps, n
        if self.batching == "sgd":
            if n % self.steps:
                raise SpecError(
                    f"Inner.steps={self.steps} must divide the sequence length n={n} for "
                    f"batching='sgd' (each step takes n/steps tokens); pick steps from "
                    f"{_divisors(n)}"
                )
            return self.steps, n // self.steps
        if n % self.chunk:
            raise SpecError(
                f"Inner.chunk={self.chunk} must divide the sequence length n={n} for "
                f"batching='online'; pick chunk from {_divisors(n)} or pad the sequence"
            )
        return n // self.chunk, self.chunk


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, min(n, 64) + 1) if n % k == 0]
