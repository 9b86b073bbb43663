"""MQAR table row: causal linear attention (b = 16); recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config("mqar_linear_attention", "linear_attention", chunk=16)
