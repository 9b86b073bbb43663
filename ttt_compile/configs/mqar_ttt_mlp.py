"""MQAR table row (d = 64, L = 64 cell): TTT-Mlp as ttt-lm-jax builds it (`layers.ttt_mlp`, b = 16,
ttt_base_lr = 1); recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config("mqar_ttt_mlp", "ttt_mlp", chunk=16, lr=1.0)
