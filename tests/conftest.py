import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

from hypothesis import Phase, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.reuse, Phase.generate]
)  # shrinking recompiles: too slow
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every cached executable after each test module.  The suite compiles thousands of XLA programs
    in one process; kept alive, their JIT code mappings approach the kernel's vm.max_map_count (65530 here)
    and XLA's CPU compiler then segfaulted (twice, after ~200 tests, in different tests)."""
    yield
    jax.clear_caches()
    gc.collect()
