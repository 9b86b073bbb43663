"""MQAR table row: MTTT-MLP (b = 16) with a learned per-token inner step
eta_k(x) = 0.006 sigmoid(theta_k . x + b_k), starting at 0.003 (the fixed row's eta); recipe in _mqar_base.py."""

from ttt_compile.configs import Config
from ttt_compile.configs._mqar_base import mqar_config


def get_config() -> Config:
    return mqar_config(
        "mqar_mttt_mlp_eta",
        "mttt_mlp",
        batching="online",
        chunk=16,
        lr=1.0,
        parametrisation="paper",
        eta="per_token",
        eta_base=0.006,
    )
