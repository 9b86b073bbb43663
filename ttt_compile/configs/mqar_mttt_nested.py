"""MQAR row: two-level MTTT (the NestedMLP learner: an MTTT-Linear layer over sub-tokens of width 8
inside MTTT-MLP's learner), b = 16, eta = 0.003 as the MTTT-MLP row; recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config(
        "mqar_mttt_nested", "mttt_nested", batching="online", chunk=16, lr=0.003, parametrisation="paper"
    )
