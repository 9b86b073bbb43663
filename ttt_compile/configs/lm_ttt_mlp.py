"""LM table row: TTT-Mlp as ttt-lm-jax builds it (`layers.ttt_mlp`: ResidualLN learner, multi-view task,
online chunks of b = 16 with the learned 1/i factor, RoPE, shared q/k projection with causal convolutions
of width 4, output norm and gate; ttt_base_lr = 1); recipe in _lm_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import lm_config


def get_config() -> Config:
    return lm_config("lm_ttt_mlp", "ttt_mlp", chunk=16, lr=1.0)
