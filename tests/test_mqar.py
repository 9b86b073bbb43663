"""MQAR generator (Zoology-style multi-query associative recall) and the LM training loop on it."""

import numpy as np
import pytest

from ttt_compile.configs import load_config
from ttt_compile.training import mqar, read_metrics, train

SPEC = mqar.MQARSpec(seq_len=32, num_pairs=4, vocab=16)


def test_an_example_is_pairs_then_queries_with_next_token_targets():
    x, y, m = mqar.example(np.random.default_rng(0), SPEC)
    N, K = SPEC.num_pairs, SPEC.vocab // 2
    keys, values = x[0 : 2 * N : 2], x[1 : 2 * N : 2]
    assert len(set(keys.tolist())) == N and (keys >= 1).all() and (keys < K).all()
    assert (values >= K).all() and (values < SPEC.vocab).all()
    np.testing.assert_array_equal(y[:-1], x[1:])  # next-token targets
    assert m.sum() == N and not m[: 2 * N].any()  # scored only on the queries
    pairs = dict(zip(keys.tolist(), values.tolist()))
    queried = x[m]
    assert sorted(queried.tolist()) == sorted(keys.tolist())  # every key asked once
    assert all(pairs[k] == v for k, v in zip(queried.tolist(), y[m].tolist()))
    assert (x[2 * N :][~m[2 * N :] & (np.roll(m, 1)[2 * N :] == 0)] == 0).all()  # the rest is filler


def test_batches_are_deterministic_per_seed_and_differ_between_seeds():
    a, b, c = mqar.batch(1, 8, SPEC), mqar.batch(1, 8, SPEC), mqar.batch(2, 8, SPEC)
    for k in ("inputs", "targets", "mask"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["inputs"], c["inputs"])
    stream = mqar.batches(0, 4, SPEC)
    assert not np.array_equal(next(stream)["inputs"], next(stream)["inputs"])


def test_accuracy_counts_masked_argmax_hits():
    targets = np.array([[1, 2, 3]])
    mask = np.array([[True, False, True]])
    logits = np.eye(4)[[[1, 0, 0]]]  # predicts 1, 0, 0
    assert mqar.accuracy(logits, targets, mask) == 0.5


@pytest.mark.parametrize(
    "bad, match",
    [(dict(seq_len=12, num_pairs=4), "seq_len=12"), (dict(num_pairs=9, vocab=16, seq_len=64), "distinct keys")],
)
def test_bad_specs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        mqar.MQARSpec(**bad)


def test_training_a_tiny_model_runs_and_reports_recall(tmp_path):
    config = load_config("mqar_linear_attention").replace(
        layer_options={"chunk": 4},
        width=16,
        heads=2,
        depth=1,
        mlp_dim=16,
        seq_len=16,
        num_pairs=2,
        vocab=12,
        batch_size=4,
        steps=3,
        warmup_steps=1,
        eval_examples=64,
        log_every=1,
        eval_every=3,
        checkpoint_every=3,
    )
    out = train(config, workdir=tmp_path, verbose=False, plots=False)
    assert 0.0 <= out["test_accuracy"] <= 1.0
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.slow
def test_softmax_attention_learns_mqar(tmp_path):
    config = load_config("mqar_self_attention").replace(
        width=32, mlp_dim=64, depth=2, seq_len=32, num_pairs=4, vocab=16
    )
    assert train(config, workdir=tmp_path, verbose=False, plots=False)["test_accuracy"] > 0.5
