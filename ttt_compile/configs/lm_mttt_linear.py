"""LM table row: MTTT-Linear, online inner loop in chunks of 16, eta = 0.003; recipe in _lm_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import lm_config


def get_config() -> Config:
    return lm_config("lm_mttt_linear", "mttt_linear", batching="online", chunk=16, lr=0.003, parametrisation="paper")
