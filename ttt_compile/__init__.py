"""ttt-compile: declare meta-learned test-time-training layers, compile them through jaxpr passes."""
from . import learners
from .spec import Inner, Reconstruction, SpecError
from .layer import TTTLayer
from .primitive import ttt_loop, ttt_loop_p, emitting
from .cost import Cost
from . import passes
from .compiler import Compiled, compile
from . import validate

__all__ = ["TTTLayer", "Inner", "Reconstruction", "SpecError", "learners", "passes", "compile", "Compiled",
           "Cost", "ttt_loop", "ttt_loop_p", "emitting"]
__version__ = "0.1.0"
