"""Shared recipe of the character-LM table (``ttt-compile table lm``; committed as
benchmarks/results/online/lm_table.md): a causal LM of width 64, depth 2, 4 heads, MLP 128, context
128, on the embedded synthetic corpus; 400 AdamW steps of 16 windows, lr 3e-3 (30 warmup steps,
cosine to 0), decoupled weight decay 0.01 * lr, clipping at global norm 1; validation loss on the
first 64 windows of the held-out 10%. The MTTT rows use the online inner loop in chunks of b = 16
tokens with eta = 0.003 in eq. 1's units (``parametrisation="paper"``, the one these rows were tuned in;
picked by the table's --sweep)."""

from ttt_compile.configs import Config

#: The pipeline of the sequence models: the dual form (online chunks as matrix products), the zero-W0
#: fold, lowering to one scan (no remat: these models are small).
TRAIN_PIPELINE = ("dual_form", "fold_zero_init", "simplify", "dce", "lower")
LR = 3e-3


def lm_config(name: str, layer: str, **layer_options) -> Config:
    return Config(
        name=name,
        data="text",
        seq_len=128,
        prev_token=False,
        vit="Ti",
        width=64,
        depth=2,
        heads=4,
        mlp_dim=128,
        layer=layer,
        layer_options=layer_options,
        passes=TRAIN_PIPELINE,
        batch_size=16,
        eval_batch_size=16,
        eval_examples=64,
        steps=400,
        lr=LR,
        warmup_steps=30,
        weight_decay=0.01 * LR,
        grad_clip=1.0,
        log_every=50,
        eval_every=200,
        checkpoint_every=200,
    )
