"""Input pipelines (grain) of the sequence tasks: the embedded character corpus and MQAR.

Records: ``inputs`` int32 ``(L,)``, ``targets`` int32 ``(L,)`` (the next tokens), ``mask`` bool ``(L,)``
(the positions scored). Example ``g`` of the training stream is a pure function of ``(seed, g)``:
a window starting at a position drawn from ``numpy.random.default_rng((seed, g))`` (text), or the
MQAR example drawn from that generator. The batch of step ``s`` on process ``h`` of ``P`` holds the
examples ``s*B + h*B/P ... s*B + (h+1)*B/P - 1``: each process builds only its own rows, and a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import grain
import numpy as np

from ttt_compile.training import mqar, text
from ttt_compile.training.data import Record

#: Examples a training stream offers (it is sliced lazily: effectively endless).
STREAM = 2**40
EVAL_SEED = 10_000


def _stack(records: Sequence[Record]) -> Record:
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


@dataclass(frozen=True)
class Corpus:
    """The embedded corpus as ids: the first 90% for training, the last 10% held out."""

    vocab: text.CharVocab
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def load(cls) -> Corpus:
        corpus = text.load()
        vocab = text.CharVocab.of(corpus)
        train, val = text.split(vocab.encode(corpus))
        return cls(vocab, train, val)


def text_examples(ids: np.ndarray, seq_len: int, seed: int) -> grain.MapDataset:
    """Example ``g``: the window ``ids[a : a + seq_len + 1]`` with ``a`` uniform from ``(seed, g)``."""
    if len(ids) <= seq_len + 1:
        raise ValueError(f"a stream of {len(ids)} tokens is too short for seq_len={seq_len}")
    offsets = np.arange(seq_len + 1)

    def window(g: int) -> Record:
        start = np.random.default_rng((seed, int(g))).integers(0, len(ids) - seq_len - 1)
        w = ids[start + offsets].astype(np.int32)
        return {"inputs": w[:-1], "targets": w[1:], "mask": np.ones(seq_len, bool)}

    return grain.MapDataset.range(STREAM).map(window)


def text_eval_records(ids: np.ndarray, seq_len: int, limit: int) -> grain.MapDataset:
    """The first ``limit`` non-overlapping windows of the held-out ids."""
    w = text.eval_windows(ids, seq_len, limit).astype(np.int32)
    return grain.MapDataset.source(np.arange(len(w))).map(
        lambda i: {"inputs": w[i, :-1], "targets": w[i, 1:], "mask": np.ones(seq_len, bool)}
    )


def mqar_examples(spec: mqar.MQARSpec, seed: int) -> grain.MapDataset:
    """Example ``g``: ``mqar.example`` drawn from ``default_rng((seed, g))``."""

    def example(g: int) -> Record:
        x, y, m = mqar.example(np.random.default_rng((seed, int(g))), spec)
        return {"inputs": x, "targets": y, "mask": m}

    return grain.MapDataset.range(STREAM).map(example)


def mqar_eval_records(spec: mqar.MQARSpec, seed: int, size: int) -> grain.MapDataset:
    """``size`` held-out examples (drawn from the seed ``EVAL_SEED + seed``, never used for training)."""
    return mqar_examples(spec, EVAL_SEED + seed)[:size]


def train_batches(
    examples: grain.MapDataset, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """Element ``s``: this process's rows (``batch_size / process_count``) of step ``s``'s batch."""
    local = batch_size // process_count
    return examples.batch(local, drop_remainder=True, batch_fn=_stack)[process_index::process_count]


def eval_batches(
    records: grain.MapDataset, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """The records in order in global batches of ``batch_size`` (this process's rows of each); the
    last batch is padded with copies of record 0 whose ``mask`` is all False."""
    n = len(records)
    steps = max(1, math.ceil(n / batch_size))

    def record(i: int) -> Record:
        r = records[int(i) if i < n else 0]
        return {**r, "mask": r["mask"] & (i < n)}

    padded = grain.MapDataset.source(np.arange(steps * batch_size)).map(record)
    return padded.batch(batch_size // process_count, batch_fn=_stack)[process_index::process_count]
