"""ttt-compile: declare meta-learned test-time-training layers, compile them through jaxpr passes.

Layers, bottom up: `ir` (the ttt_loop primitive, the rewriting interpreter) <- `layer` (spec,
learners, outer maps, TTTLayer) and `compiler`/`cost`/`validate` <- `passes` <- `models` <-
training <- benchmarks / CLI.
"""

import sys as _sys

from . import passes, validate
from .compiler import Compiled, compile
from .cost import Cost
from .ir.primitive import emitting, ttt_loop, ttt_loop_p
from .layer import learners, spec
from .layer.spec import Inner, MultiView, Readout, Reconstruction, SequenceMaps, SpecError
from .layer.ttt_layer import TTTLayer

# The modules' old flat paths keep working (`from ttt_compile.learners import Linear`).
_sys.modules.setdefault(__name__ + ".learners", learners)
_sys.modules.setdefault(__name__ + ".spec", spec)

__all__ = [
    "TTTLayer",
    "validate",
    "Inner",
    "Reconstruction",
    "MultiView",
    "SequenceMaps",
    "Readout",
    "SpecError",
    "learners",
    "passes",
    "compile",
    "Compiled",
    "Cost",
    "ttt_loop",
    "ttt_loop_p",
    "emitting",
]
__version__ = "0.1.0"
