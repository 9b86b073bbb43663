"""Shared recipe of the MQAR table (``ttt-compile table mqar``; committed as
benchmarks/results/online/mqar_table.md): a causal LM of depth 1 (one mixer + MLP of 2 x width), 2
heads, with the previous-token embedding, on N = L / 8 key-value pairs over 128 ids; 300 AdamW steps
of 32 fresh examples, lr 3e-3 (30 warmup steps), decay 0.01 * lr, clipping at 1; recall accuracy on 256
held-out examples. The table varies ``width`` (32, 64) and ``seq_len`` (32, 64) around the default
cell d = 64, L = 64 and the seed (0, 1, 2)."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import LR, TRAIN_PIPELINE


def mqar_config(name: str, layer: str, **layer_options) -> Config:
    return Config(
        name=name,
        data="mqar",
        seq_len=64,
        num_pairs=8,
        vocab=128,
        prev_token=True,
        vit="Ti",
        width=64,
        depth=1,
        heads=2,
        mlp_dim=128,
        layer=layer,
        layer_options=layer_options,
        passes=TRAIN_PIPELINE,
        batch_size=32,
        eval_batch_size=64,
        eval_examples=256,
        steps=300,
        lr=LR,
        warmup_steps=30,
        weight_decay=0.01 * LR,
        grad_clip=1.0,
        log_every=50,
        eval_every=300,
        checkpoint_every=300,
    )


def cell(config: Config, width: int, seq_len: int, seed: int) -> Config:
    """One cell of the table: ``width`` (MLP 2 x width), context ``seq_len`` with ``seq_len / 8`` pairs."""
    return config.replace(
        width=width,
        mlp_dim=2 * width,
        seq_len=seq_len,
        num_pairs=seq_len // 8,
        seed=seed,
        name=f"{config.name}_d{width}_L{seq_len}_s{seed}",
    )
