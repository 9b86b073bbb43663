import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

from hypothesis import Phase, settings  # noqa: E402

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                           phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking recompiles: too slow
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
