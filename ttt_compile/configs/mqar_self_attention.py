"""MQAR table row: causal softmax attention; recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config("mqar_self_attention", "self_attention")
