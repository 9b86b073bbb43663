"""The causal LM: token-by-token decode (O(D) state) equals the chunked prefill; clear errors; the
embedded synthetic corpus."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ttt_compile as tc
from ttt_compile.configs import load_config
from ttt_compile.models import layers
from ttt_compile.models.causal import causal_linear_attention
from ttt_compile.models.lm import TTTState, causal_lm
from ttt_compile.training import make_task, text

KEY = jax.random.PRNGKey(0)
#: The default pipeline with the dual form placed before the passes that consume the loop.
DUAL_PIPELINE = ("remat", "dual_form", "sgd_batch", "unroll", "fold_zero_init", "simplify", "cse", "dce", "lower")
VOCAB, WIDTH, HEADS, N = 11, 16, 2, 12
IDS = jax.random.randint(jax.random.PRNGKey(3), (N,), 0, VOCAB)

MIXERS = {
    "mttt_linear_b4": lambda **kw: layers.mttt_linear(batching="online", chunk=4, lr=0.1, **kw),
    "mttt_linear_b1": lambda **kw: layers.mttt_linear(batching="online", chunk=1, lr=0.1, **kw),
    "mttt_mlp_b3": lambda **kw: layers.mttt_mlp(batching="online", chunk=3, lr=0.1, **kw),
    "linear_attention_chunked_elu1": lambda **kw: causal_linear_attention(chunk=4, feature_map="elu1", **kw),
    "linear_attention_masked": lambda **kw: layers.linear_attention(causal=True, **kw),
    "softmax": lambda **kw: layers.self_attention(causal=True, **kw),
    # ttt-lm-jax's layers (convolutions, rotary positions mod b, learned 1/i factor, norm and gate), every
    # array moved off its init so each term counts
    "ttt_linear_b4": lambda **kw: _moved(layers.ttt_linear(chunk=4, **kw)),
    "ttt_mlp_base_b3": lambda **kw: _moved(layers.ttt_mlp(chunk=3, base=True, **kw)),
}
FAST = {"mttt_linear_b4", "mttt_mlp_b3", "linear_attention_chunked_elu1", "softmax", "ttt_linear_b4", "ttt_mlp_base_b3"}


def _moved(layer):
    leaves, tree = jax.tree_util.tree_flatten(layer)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [a + 0.2 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    )


@functools.cache
def lm(mixer, depth=2, max_len=16):
    """One model per configuration for the whole module (building one compiles its random inits)."""
    return causal_lm(
        vocab=VOCAB,
        width=WIDTH,
        depth=depth,
        heads=HEADS,
        max_len=max_len,
        mixer=MIXERS[mixer],
        prev_token=True,
        key=KEY,
    )


@eqx.filter_jit
def prefill(model, ids):
    return model(ids)


@eqx.filter_jit
def decode(model, ids):
    return model.decode(ids)


@pytest.mark.parametrize("mixer", [pytest.param(m, marks=() if m in FAST else pytest.mark.slow) for m in MIXERS])
def test_token_by_token_decode_equals_the_chunked_prefill(mixer):
    model = lm(mixer)
    want = prefill(model, IDS)
    assert want.shape == (N, VOCAB)
    np.testing.assert_allclose(decode(model, IDS), want, rtol=1e-4, atol=1e-4)


def test_ttt_decode_state_is_constant_size_and_holds_chunk_start_weights():
    model = lm("mttt_linear_b4")
    state = model.init_state()
    ttt = state.layers[0]
    assert isinstance(ttt, TTTState)
    dh = WIDTH // HEADS
    assert jax.tree_util.tree_leaves(ttt.W)[0].shape == (HEADS, dh, dh)
    step = eqx.filter_jit(lambda m, s, t: m.step(s, t))
    shapes = jax.tree.map(jnp.shape, state)
    for t in range(6):
        _, state = step(model, state, IDS[t])
        assert jax.tree.map(jnp.shape, state) == shapes  # O(D): no growth with t
    assert int(state.t) == 6 and int(state.layers[0].p) == 2  # 6 = one chunk of 4 + 2


def test_compiled_lm_prefill_equals_the_reference_and_the_decode():
    model = lm("mttt_linear_b4")
    prog = tc.compile(model, IDS, passes=list(DUAL_PIPELINE))
    notes = " ".join(n for _, ns in prog.notes for n in ns)
    assert "dual form for" in notes
    np.testing.assert_allclose(prefill(prog, IDS), prefill(model, IDS), rtol=1e-4, atol=1e-4)
    batch = jnp.stack([IDS, IDS[::-1]])
    np.testing.assert_allclose(
        eqx.filter_jit(lambda p, b: jax.vmap(p)(b))(prog, batch)[1], prefill(model, IDS[::-1]), rtol=1e-4, atol=1e-4
    )


def test_decoding_past_max_len_is_a_clear_error():
    model = lm("linear_attention_chunked_elu1")
    state = model.init_state()
    state = state._replace(t=jnp.asarray(model.max_len, jnp.int32))
    with pytest.raises(Exception, match="decoding past max_len=16"):
        jax.block_until_ready(model.step(state, IDS[0]))
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model(jnp.zeros(model.max_len + 1, jnp.int32))


def test_a_state_of_another_model_is_a_clear_error():
    model = lm("mttt_linear_b4")

    def shapes_only(**kw):  # the other models' shapes suffice: their states are built from static sizes
        return eqx.filter_eval_shape(
            lambda: causal_lm(
                **{**dict(vocab=VOCAB, width=WIDTH, depth=2, heads=HEADS, max_len=16, prev_token=True, key=KEY), **kw}
            )
        )

    wider = shapes_only(width=2 * WIDTH, mixer=MIXERS["mttt_linear_b4"])
    with pytest.raises(ValueError, match=r"decode state leaf .* has shape \(2, 16, 16\)"):
        model.step(wider.init_state(), IDS[0])
    with pytest.raises(ValueError, match="structure"):
        model.step(shapes_only(mixer=MIXERS["softmax"]).init_state(), IDS[0])


def test_a_non_causal_mixer_is_refused():
    with pytest.raises(tc.SpecError, match="batching='online'"):
        causal_lm(
            vocab=VOCAB,
            width=WIDTH,
            depth=1,
            heads=HEADS,
            max_len=8,
            key=KEY,
            mixer=lambda **kw: layers.mttt_linear(**kw),
        )
    with pytest.raises(tc.SpecError, match="causal=True"):
        causal_lm(
            vocab=VOCAB,
            width=WIDTH,
            depth=1,
            heads=HEADS,
            max_len=8,
            key=KEY,
            mixer=lambda **kw: layers.self_attention(**kw),
        )


@pytest.mark.slow
def test_generate_continues_a_prompt_with_the_decode_path():
    model = lm("mttt_linear_b4")
    out = model.generate(IDS[:4], 5, key=KEY, temperature=0.0)
    assert out.shape == (5,)
    want = jnp.argmax(prefill(model, jnp.concatenate([IDS[:4], out[:4]]))[3:], axis=-1)  # greedy = argmax
    np.testing.assert_array_equal(out, want)


# --------------------------------------------------------------------------- the corpus
def test_the_shipped_corpus_is_the_seeded_grammar_output():
    shipped = text.load()
    assert shipped == text.generate()
    assert 200_000 < len(shipped.encode()) < 400_000


def test_char_vocab_and_windows():
    corpus = text.load()
    vocab = text.CharVocab.of(corpus)
    ids = vocab.encode(corpus[:500])
    assert vocab.decode(ids) == corpus[:500]
    train, val = text.split(vocab.encode(corpus))
    assert len(train) + len(val) == len(corpus)
    w = next(text.windows(train, 32, 4, seed=0))
    assert w.shape == (4, 33)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("\u00e9")
    config = load_config("lm_linear_attention").replace(
        seq_len=32, width=16, heads=2, depth=1, layer_options={"chunk": 8}
    )
    assert make_task(config).build(KEY).vocab == vocab.size


def test_the_lm_task_trains_through_the_one_trainer(tmp_path):
    from ttt_compile.training import read_metrics, train

    config = load_config("lm_mttt_linear").replace(
        seq_len=32,
        width=16,
        heads=2,
        depth=1,
        mlp_dim=32,
        layer_options={"batching": "online", "chunk": 8, "lr": 0.1},
        batch_size=4,
        eval_batch_size=4,
        eval_examples=8,
        steps=2,
        warmup_steps=1,
        log_every=1,
        eval_every=2,
        checkpoint_every=2,
    )
    out = train(config, workdir=tmp_path, verbose=False, plots=False)
    test = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "test"][-1]
    assert np.isclose(test["perplexity"], np.exp(test["loss"])) and np.isclose(
        test["bits_per_token"], test["loss"] / np.log(2)
    )
    assert out["test_loss"] < np.log(text.CharVocab.of(text.load()).size) + 1.0  # near uniform or better
    names = make_task(config).stage_names(out["model"])
    assert names == ["embed", "blocks[0].mixer (layer mttt_linear)", "blocks[0].mlp", "head"]
