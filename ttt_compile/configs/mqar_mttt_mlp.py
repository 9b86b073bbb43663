"""MQAR table row: MTTT-MLP (b = 16, eta = 0.003); recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config("mqar_mttt_mlp", "mttt_mlp", batching="online", chunk=16, lr=0.003, parametrisation="paper")
