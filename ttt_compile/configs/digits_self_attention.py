"""Digits results table, layer `self_attention`; the shared recipe is in _digits_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._digits_base import table_config


def get_config() -> Config:
    return table_config("digits_self_attention", "self_attention")
