"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), generated procedurally.

One example of length L with N key-value pairs over a vocabulary of V ids:

    context   k_1 v_1 k_2 v_2 ... k_N v_N                    (2N tokens; keys distinct)
    queries   the N keys again in a random order, each followed by its value, placed at random
              even offsets of the remaining L - 2N positions; every other position is the filler 0

Keys are drawn from ids 1..K-1 and values from K..V-1 (K = V // 2; 0 is the filler), so a key is
never a value.  The model reads token i and predicts token i+1 (next-token targets); it is scored
only where token i is a queried key (target: that key's value).  Recall accuracy is the fraction of
those positions where argmax of the logits is the value.  A model can answer only by having stored
the pairs of the context in its state: the task measures associative memory capacity per width.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ttt_compile.configs import mqar_shape_problem


@dataclasses.dataclass(frozen=True)
class MQARSpec:
    """Sequence length L, number of pairs N and vocabulary size V of a task."""

    seq_len: int = 64
    num_pairs: int = 8
    vocab: int = 64

    def __post_init__(self):
        problem = mqar_shape_problem(self.seq_len, self.num_pairs, self.vocab)
        if problem:
            raise ValueError(f"MQARSpec: {problem}")


def example(rng: np.random.Generator, spec: MQARSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (L,), targets (L,), mask (L,)) for one sequence: targets[i] = inputs[i+1] (last: 0),
    mask[i] = inputs[i] is a queried key."""
    L, N, V = spec.seq_len, spec.num_pairs, spec.vocab
    K = V // 2
    keys = rng.choice(np.arange(1, K), size=N, replace=False)
    values = rng.integers(K, V, size=N)
    seq = np.zeros(L + 1, np.int32)
    seq[0 : 2 * N : 2], seq[1 : 2 * N : 2] = keys, values
    slots = (L - 2 * N) // 2  # query slots at even offsets after the context
    where = 2 * N + 2 * np.sort(rng.choice(slots, size=N, replace=False))
    order = rng.permutation(N)
    seq[where], seq[where + 1] = keys[order], values[order]
    mask = np.zeros(L, bool)
    mask[where] = True
    return seq[:L], seq[1 : L + 1], mask


def batch(seed: int | tuple[int, ...], size: int, spec: MQARSpec) -> dict[str, np.ndarray]:
    """A batch of `size` examples from a seeded generator (numpy's SeedSequence of `seed`): inputs,
    targets (int32), mask (bool)."""
    rng = np.random.default_rng(seed)
    xs, ys, ms = zip(*(example(rng, spec) for _ in range(size)))
    return {"inputs": np.stack(xs), "targets": np.stack(ys), "mask": np.stack(ms)}


def batches(seed: int, size: int, spec: MQARSpec):
    """Endless fresh batches (batch i from seed (seed, i))."""
    i = 0
    while True:
        yield batch((seed, i), size, spec)
        i += 1


def accuracy(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of masked positions whose argmax equals the target."""
    hit = (np.argmax(logits, axis=-1) == targets) & mask
    return float(hit.sum() / max(mask.sum(), 1))


__all__ = ["MQARSpec", "example", "batch", "batches", "accuracy"]
