"""The `ttt_loop` primitive object and the meaning of its parameters (`LoopInfo`).

The base of the IR: `loop_ad` (the AD rules, which bind derived loops) and `primitive` (impl,
abstract evaluation, batching, DCE, lowering, and the one place where every rule is registered)
both build on this module, so the IR reads top-down: loop_def <- loop_ad <- primitive.
"""

from __future__ import annotations

import dataclasses

from jax.extend.core import ClosedJaxpr, Primitive

ttt_loop_p = Primitive("ttt_loop")
ttt_loop_p.multiple_results = True

REMAT_SCHEMES = (None, "step", "sqrt", "log")


@dataclasses.dataclass(frozen=True)
class LoopInfo:
    """The static meaning of one `ttt_loop` equation, parsed from its params."""

    body: ClosedJaxpr
    steps: int
    schedule: str
    init: str
    num_consts: int
    num_carry: int
    num_weights: int
    remat: str | None
    reverse: bool = False  # run the steps t = T-1, ..., 0 (a transposed loop)
    role: str = "inner"  # "inner" (a layer's loop) or what AD derived it as (see loop_ad)

    def split(self, args):
        c, k = self.num_consts, self.num_consts + self.num_carry
        return list(args[:c]), list(args[c:k]), list(args[k:])


def info(params: dict) -> LoopInfo:
    return LoopInfo(**{f.name: params[f.name] for f in dataclasses.fields(LoopInfo) if f.name in params})
