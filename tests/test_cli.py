"""The command line: one parser, subcommands calling the library; wrong arguments are one line and exit 2."""

import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest

from ttt_compile.cli import DEVICE_BENCH, main


def test_inspect_prints_the_stage_table_as_json(capsys):
    assert main(["inspect", "mttt_linear", "--dim", "16", "--heads", "2", "--seq", "8", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert stages[0]["pass"] and all(s["eqns"] > 0 for s in stages)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: command"),
        (["trian", "digits_tiny"], "invalid choice: 'trian'"),
        (
            ["inspect", "no_layer", "--dim", "16", "--heads", "2", "--seq", "8"],
            "layer='no_layer' is not a layer preset",
        ),
        (["inspect", "mttt_linear", "--dim", "-3"], "-3 is not a positive integer"),
        (
            [
                "inspect",
                "mttt_linear",
                "--dim",
                "16",
                "--heads",
                "2",
                "--seq",
                "8",
                "--batching",
                "online",
                "--chunk",
                "3",
            ],
            "chunk",
        ),
        (["train", "digits_tiny", "--num-processes", "2"], "a multi-process run needs all of coordinator"),
        (
            ["train", "digits_tiny", "--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
            "must be host:port",
        ),
        (["table", "lm", "--only", "nope"], "invalid choice: 'nope'"),
        (["bench", "--only"], "expected at least one argument"),
    ],
)
def test_wrong_arguments_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_bench_device_calls_the_device_benchmark_when_installed(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, DEVICE_BENCH, raising=False)
    if importlib.util.find_spec(DEVICE_BENCH) is None:
        assert main(["bench", "--device", "--tiny"]) == 2
        assert "--device needs ttt_compile.benchmarks.device" in capsys.readouterr().err
    calls = []
    fake = types.ModuleType(DEVICE_BENCH)
    fake.__spec__ = importlib.machinery.ModuleSpec(DEVICE_BENCH, None)
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, DEVICE_BENCH, fake)
    assert main(["bench", "--device", "--tiny", "--out", "x"]) == 0
    assert calls == [["--tiny", "--out", "x"]]
