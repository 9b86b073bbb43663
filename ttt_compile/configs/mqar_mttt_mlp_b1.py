"""MQAR table row: MTTT-MLP token by token (b = 1, T = n, eta = 0.003); recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config("mqar_mttt_mlp_b1", "mttt_mlp", batching="online", chunk=1, lr=0.003, parametrisation="paper")
