"""The results tables: each module runs shipped configs through the one trainer and writes
``results.json`` / ``.md`` (and plots) to a scratch folder unless ``--out`` says otherwise.

    ttt-compile table digits   # ViT on the 8x8 digits, every layer, 3 seeds (~32 min on 2 CPU cores)
    ttt-compile table lm       # character LM, 4 mixers (~8 min on 2 CPU cores; --seeds 0 1 2 for three)
    ttt-compile table mqar     # associative recall, 5 models x 2 widths x 2 lengths x 3 seeds (~45 min;
                               # --merge adds rows to an existing table)
"""
