"""The benchmarks (`ttt-compile bench`, `python -m ttt_compile.benchmarks.<name>`): FLOPs, wall-clock time
and compiled memory of the layers under each pass pipeline, and the paper's comparisons.

Every benchmark uses one harness: `harness` compiles a function and reads its figures (FLOPs with loop
trip counts, XLA's memory analysis) and writes results (JSON + markdown); `timing` times functions in
interleaved rounds.  `suite` (+ `suite_measure`, `suite_report`, `plots`) is the pass-comparison
suite; `device` (+ `device_jobs`, `device_report`) the accelerator benchmark; `tables` the results
tables."""
