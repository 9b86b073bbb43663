"""The LM and recall table makers (ttt_compile.benchmarks.tables): rows are shipped configs run by the
one trainer; output goes to --out (default: a scratch folder, never the committed results)."""

import json

from ttt_compile.benchmarks.tables import lm, mqar, provenance
from ttt_compile.cli import main
from ttt_compile.configs import available, load_config


def test_every_row_is_a_shipped_config_and_the_default_output_is_scratch():
    assert set(lm.ROWS) | set(mqar.ROWS) <= set(available())
    assert {load_config(n).data for n in lm.ROWS} == {"text"} and {load_config(n).data for n in mqar.ROWS} == {"mqar"}
    assert str(provenance.scratch_out("lm")) == "runs/tables/lm"


def test_mqar_table_runs_a_cell_through_the_trainer(tmp_path, capsys):
    argv = [
        "table",
        "mqar",
        "--steps",
        "2",
        "--models",
        "mqar_linear_attention",
        "--widths",
        "16",
        "--lengths",
        "32",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "out"),
        "--runs",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "out" / "mqar_table.json").read_text())
    (row,) = saved["rows"]
    assert (row["model"], row["width"], row["length"], row["config"]["num_pairs"]) == (
        "mqar_linear_attention",
        16,
        32,
        4,
    )
    assert 0.0 <= row["accuracy"] <= 1.0 and saved["meta"]["steps"] == 2
    assert saved["meta"]["command"].startswith("ttt-compile table mqar --steps 2")
    md = (tmp_path / "out" / "mqar_table.md").read_text()
    assert "| linear attention | " in md and "d=16, L=32 (N=4)" in md
    assert "a full run took about 43 min" in capsys.readouterr().out


def test_lm_table_markdown_names_each_config_and_its_figures():
    row = {
        "config": load_config("lm_mttt_linear").to_dict(),
        "params": 78976,
        "train_loss": 1.6,
        "val_loss": 1.5,
        "val_ppl": 4.48,
        "val_bpc": 2.16,
        "steps_per_s": 5.0,
        "sample": "1. Ada",
    }
    meta = {
        "date": "2026-12-01",
        "chars": 300273,
        "vocab": 64,
        "steps": 400,
        "cpu": "cpu",
        "cpus": 2,
        "wall_s": 60,
        "command": "ttt-compile table lm",
    }
    md = lm.markdown([row], meta, {})
    assert "| lm_mttt_linear | mttt_linear | 16 | 0.003 | 78,976 | 1.600 | 1.500 | 4.48 | 2.160 | 5.0 |" in md
    assert "- lm_mttt_linear: `1. Ada`" in md
