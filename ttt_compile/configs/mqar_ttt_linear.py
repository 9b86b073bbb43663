"""MQAR table row (d = 64, L = 64 cell): TTT-Linear as ttt-lm-jax builds it (`layers.ttt_linear`, b = 16,
ttt_base_lr = 1); recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config("mqar_ttt_linear", "ttt_linear", chunk=16, lr=1.0)
