"""The pass-comparison benchmark suite (`ttt-compile bench`): FLOPs, wall-clock time and compiled
memory of every layer preset under each pass pipeline, across sequence lengths.

`suite.main(argv)` runs it; `timing` holds the interleaved timer; `plots` draws the figures."""
