"""LM table row: two-level MTTT (the NestedMLP learner: an MTTT-Linear layer over sub-tokens of width 8
inside MTTT-MLP's learner), online chunks of 16, eta = 0.003 as the MTTT-MLP row; recipe in _lm_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._lm_base import lm_config


def get_config() -> Config:
    return lm_config("lm_mttt_nested", "mttt_nested", batching="online", chunk=16, lr=0.003, parametrisation="paper")
