"""The IR: JAX's jaxpr plus one higher-order primitive, `ttt_loop` (`primitive`), the rewriting
interpreter every pass is built on (`interpreter`), the two ways a pass expands a loop
(`expand_loop`: explicit steps or nested scans) and small jaxpr utilities (`jaxpr_utils`).
Imports nothing of ttt_compile above it."""

from .interpreter import Interpreter, default_rule, rewrite
from .jaxpr_utils import count_eqns, dce, hoist_consts
from .primitive import LoopInfo, contains_loop, emitting, info, is_emitting, ttt_loop, ttt_loop_p

__all__ = [
    "Interpreter",
    "default_rule",
    "rewrite",
    "count_eqns",
    "dce",
    "hoist_consts",
    "LoopInfo",
    "contains_loop",
    "emitting",
    "info",
    "is_emitting",
    "ttt_loop",
    "ttt_loop_p",
]
