import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

from hypothesis import Phase, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.reuse, Phase.generate]
)  # shrinking recompiles: too slow
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import gc  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# One on-disk XLA compilation cache per test session, shared by the pytest-xdist workers (they inherit
# the controller's environment) and empty at the start of every run, so the measured suite time is a
# cold run's.  The suite compiles the same small programs (eager ops of parameter initialisation, the
# same layers' steps) in many modules, and `_free_compiled_programs` below drops the in-memory cache
# after each module; recompiling one from this cache is a read, not an XLA compile (6.0 s -> 0.7 s for
# 29 eager random.normal shapes here).  Values are unchanged: the cache stores the same executables.
if "TTT_TEST_XLA_CACHE" not in os.environ:  # the controller (or a plain run) makes it; workers inherit it
    os.environ["TTT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="ttt-compile-xla-cache-")
    _OWNS_XLA_CACHE = True
else:
    _OWNS_XLA_CACHE = False
jax.config.update("jax_compilation_cache_dir", os.environ["TTT_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every cached executable after each test module.  The suite compiles thousands of XLA programs
    in one process; kept alive, their JIT code mappings approach the kernel's vm.max_map_count (65530 here)
    and XLA's CPU compiler then segfaulted (twice, after ~200 tests, in different tests)."""
    yield
    jax.clear_caches()
    gc.collect()


def pytest_unconfigure(config):
    """The process that made the session's XLA cache removes it when the session ends."""
    if _OWNS_XLA_CACHE:
        shutil.rmtree(os.environ["TTT_TEST_XLA_CACHE"], ignore_errors=True)


# The modules whose tests take longest (a minute or more each on a 2-core machine) run first: under
# pytest-xdist's worksteal the last tests decide when the run ends, and a run that ends on short tests
# keeps both workers busy to the end (longest-first scheduling).
LONGEST_FIRST = ("test_validate_generated.py", "test_sharding.py", "test_planner.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
