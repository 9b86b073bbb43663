"""`ttt-compile`: inspect a layer's compilation, run the benchmarks, train a config, make a results table.

    ttt-compile inspect LAYER [--dim --heads --seq --steps --batching --chunk --passes] [--json]
    ttt-compile bench [--quick] [--out DIR]
    ttt-compile bench --device [--tiny] [--out DIR] [--budget S]
    ttt-compile train CONFIG [--data digits|imagenet:DIR|text|mqar] [--workdir DIR] [--steps N] [--resume]
                             [--coordinator HOST:PORT --num-processes N --process-id I]
    ttt-compile table digits|lm|mqar [--out DIR] ...

One parser; each subcommand calls the library. Bad arguments, unknown names and configs that do not
fit print one line naming the fix and exit with status 2; a run stopped by non-finite values exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence

USAGE_ERROR = 2
DEVICE_BENCH = "ttt_compile.benchmarks.device"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


# --------------------------------------------------------------------------------------- commands


def inspect(args: argparse.Namespace) -> int:
    """Compile LAYER on one random sequence; print the cost table, then on request each pass's diff and jaxprs."""
    import jax

    import ttt_compile as tc
    from ttt_compile.configs import ConfigError
    from ttt_compile.ir.primitive import loop_nesting
    from ttt_compile.training.tasks import resolve_layer

    options = {k: getattr(args, k) for k in ("steps", "batching", "chunk") if getattr(args, k) is not None}
    key = jax.random.PRNGKey(args.seed)
    try:
        layer = resolve_layer(args.layer)(dim=args.dim, heads=args.heads, key=key, **options)
        x = jax.random.normal(jax.random.fold_in(key, 1), (args.seq, args.dim))
        prog = tc.compile(layer, x, passes=args.passes)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    if args.json:
        print(
            json.dumps(
                {
                    "layer": args.layer,
                    "dim": args.dim,
                    "heads": args.heads,
                    "seq": args.seq,
                    "stages": [
                        {
                            "pass": name,
                            "eqns": c.eqns,
                            "flops": c.flops,
                            "bytes": c.bytes,
                            "temp_bytes": c.temp_bytes,
                            "notes": list(notes),
                            "loops": loop_nesting(closed),
                        }
                        for (name, closed, c), (_, notes) in zip(prog.stages, prog.notes)
                    ],
                }
            )
        )
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


def bench(args: argparse.Namespace) -> int:
    from ttt_compile.benchmarks import suite

    return suite.run_args(args)


def train(args: argparse.Namespace) -> int:
    from ttt_compile.configs import load_config
    from ttt_compile.training import distributed
    from ttt_compile.training.trainer import train as run

    distributed.initialize(distributed.cluster(args.coordinator, args.num_processes, args.process_id))
    run(load_config(args.config), data=args.data, workdir=args.workdir, steps=args.steps, resume=args.resume)
    return 0


def table(args: argparse.Namespace) -> int:
    return TABLES[args.table]().run_table(args, args.argv[2:])  # recorded as the table's command line


def _table_module(name: str):
    return importlib.import_module(f"ttt_compile.benchmarks.tables.{name}")


TABLES = {name: (lambda name=name: _table_module(name)) for name in ("digits", "lm", "mqar")}


# ----------------------------------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="ttt-compile", description="A compiler for meta-learned test-time training layers.")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="print the jaxpr after each pass and the cost table")
    p.add_argument(
        "layer",
        help="self_attention, linear_attention, linear_attention_elu1, mttt_linear, "
        "mttt_mlp, mttt_kernel, or module:attr naming a layer factory",
    )
    p.add_argument("--dim", type=_positive_int, default=384)
    p.add_argument("--heads", type=_positive_int, default=6)
    p.add_argument("--seq", type=_positive_int, default=196, help="sequence length n")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--batching", choices=["full", "sgd", "online"])
    p.add_argument("--chunk", type=_positive_int)
    p.add_argument("--passes", default="default", help="'default', 'none' or comma-separated pass names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the stage table as JSON")
    p.add_argument("--diff", action="store_true", help="after the table, what each pass changed")
    p.add_argument("--jaxprs", action="store_true", help="after the table, the program after each pass")
    p.add_argument("--table-only", action="store_true", help="the cost table only (the default; kept for scripts)")
    p.set_defaults(run=inspect)

    p = sub.add_parser("bench", help="run the pass-comparison benchmark suite (--device: the accelerator benchmark)")
    from ttt_compile.benchmarks import suite

    suite.add_arguments(p)
    p.add_argument("--device", action="store_true", help="the prepared accelerator benchmark (its own options)")
    p.set_defaults(run=bench)

    p = sub.add_parser("train", help="train a config (ViT, causal LM or recall)")
    p.add_argument("config", help="a config .py file (defining get_config()) or a name under ttt_compile/configs")
    p.add_argument("--data", help="digits | imagenet:DIR | text | mqar (default: the config's)")
    p.add_argument("--workdir", help="where metrics, checkpoints and plots go (default: runs/<config name>)")
    p.add_argument("--steps", type=_positive_int, help="train for N steps (the schedule is scaled to N)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest readable checkpoint in --workdir "
        "(an unreadable one is reported and the previous one used)",
    )
    p.add_argument("--coordinator", help="multi-process: HOST:PORT of process 0 (env JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=_positive_int, help="multi-process: how many (env JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="multi-process: this one, 0..N-1 (env JAX_PROCESS_ID)")
    p.set_defaults(run=train)

    p = sub.add_parser(
        "table", help="make a results table (digits, lm, mqar); writes to a scratch folder unless --out is given"
    )
    tables = p.add_subparsers(dest="table", required=True, parser_class=_Parser)
    for name in TABLES:
        module = TABLES[name]()
        t = tables.add_parser(name, help=module.__doc__.strip().splitlines()[0])
        module.add_arguments(t)
        t.set_defaults(run=table)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from ttt_compile.configs import ConfigError
    from ttt_compile.layer.spec import SpecError
    from ttt_compile.training.checkpoints import CheckpointError
    from ttt_compile.training.trainer import NonFiniteError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--device" in argv[1:]:
        if importlib.util.find_spec(DEVICE_BENCH) is None:
            print(
                "ttt-compile bench: error: --device needs ttt_compile.benchmarks.device, which this installation lacks",
                file=sys.stderr,
            )
            return USAGE_ERROR
        rest = [a for a in argv[1:] if a != "--device"]
        return int(importlib.import_module(DEVICE_BENCH).main(rest) or 0)
    try:
        args = parser().parse_args(argv)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return USAGE_ERROR
    except SystemExit as e:  # --help
        return int(e.code or 0)
    args.argv = argv
    try:
        return int(args.run(args) or 0)
    except (ConfigError, CheckpointError, SpecError) as e:
        print(f"ttt-compile {args.command}: error: {e}".replace("\n", " "), file=sys.stderr)
        return USAGE_ERROR
    except NonFiniteError as e:
        print(f"ttt-compile {args.command}: stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
