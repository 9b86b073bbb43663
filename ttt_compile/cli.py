"""`ttt-compile`: inspect a layer's compilation, run the benchmark suite, train a config.

    ttt-compile inspect LAYER [--dim --heads --seq --steps --batching --chunk --passes] [--json]
    ttt-compile bench [--quick] [--out DIR]
    ttt-compile bench --device [--tiny] [--out DIR]
    ttt-compile train CONFIG [--data digits|imagenet:DIR] [--workdir DIR] [--steps N] [--resume]

Bad arguments print one line naming the fix and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(USAGE_ERROR)


def _factory(name: str):
    """A preset name from ttt_compile.models.layers, or 'module:attr' naming a user's factory."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load layer factory {name!r} ({e}); give 'package.module:function'") from e
    from ttt_compile.models import layers
    return layers.get(name)


def inspect(args) -> int:
    """Compile LAYER on one random sequence; print the cost table, then on request each pass's diff and jaxprs."""
    import jax

    import ttt_compile as tc
    options = {k: getattr(args, k) for k in ("steps", "batching", "chunk") if getattr(args, k) is not None}
    key = jax.random.PRNGKey(args.seed)
    layer = _factory(args.layer)(dim=args.dim, heads=args.heads, key=key, **options)
    x = jax.random.normal(jax.random.fold_in(key, 1), (args.seq, args.dim))
    prog = tc.compile(layer, x, passes=args.passes)
    if args.json:
        print(json.dumps({"layer": args.layer, "dim": args.dim, "heads": args.heads, "seq": args.seq,
                          "stages": [{"pass": name, "eqns": c.eqns, "flops": c.flops, "bytes": c.bytes,
                                      "temp_bytes": c.temp_bytes, "notes": list(notes)}
                                     for (name, _, c), (_, notes) in zip(prog.stages, prog.notes)]}))
        return 0
    print(prog.report())
    if args.diff:
        for i, (name, _, _) in enumerate(prog.stages[1:], start=1):
            print(f"\n==== {name}: what it changed ====")
            print(prog.diff(i))
    if args.jaxprs:
        for name, closed, _ in prog.stages:
            print(f"\n==== after {name} ====")
            print(closed)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="ttt-compile", description="A compiler for meta-learned test-time training layers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("inspect", help="print the jaxpr after each pass and the cost table")
    p.add_argument("layer", help="self_attention, linear_attention, linear_attention_elu1, mttt_linear, "
                                 "mttt_mlp, mttt_kernel, or module:attr naming a layer factory")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seq", type=int, default=196, help="sequence length n")
    p.add_argument("--steps", type=int)
    p.add_argument("--batching", choices=["full", "sgd", "online"])
    p.add_argument("--chunk", type=int)
    p.add_argument("--passes", default="default", help="'default', 'none' or comma-separated pass names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the stage table as JSON")
    p.add_argument("--diff", action="store_true", help="after the table, what each pass changed")
    p.add_argument("--jaxprs", action="store_true", help="after the table, the program after each pass")
    p.add_argument("--table-only", action="store_true", help="the cost table only (the default; kept for scripts)")
    sub.add_parser("bench", help="run the pass-comparison benchmark suite", add_help=False)
    sub.add_parser("train", help="train a config (see ttt-compile train --help)", add_help=False)
    if argv and argv[0] in ("bench", "train"):
        module = "ttt_compile.benchmarks.suite" if argv[0] == "bench" else "ttt_compile.train"
        rest = argv[1:]
        if argv[0] == "bench" and "--device" in rest:
            module, rest = "ttt_compile.benchmarks.device", [a for a in rest if a != "--device"]
        return int(importlib.import_module(module).main(rest) or 0)
    args = parser.parse_args(argv)
    from ttt_compile.layer.spec import SpecError
    try:
        return inspect(args)
    except (SpecError, ValueError, TypeError) as e:
        sys.stderr.write(f"ttt-compile: error: {e}\n".replace("\n", " ").rstrip() + "\n")
        return USAGE_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
