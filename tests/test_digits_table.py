"""The digits results table machinery (ttt_compile.benchmarks.tables.digits) on 1 layer x 1 seed x 2 steps, and the
logistic-regression floor on a small budget.

The layer is the table's linear-attention config with one block instead of two (written to a temporary
config file), to keep compilation, which dominates a 2-step run, short."""

import json
from pathlib import Path

import pytest

from ttt_compile.benchmarks.tables import digits


def _load_script():
    return digits


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    dt = _load_script()
    out = tmp_path_factory.mktemp("digits_table")
    config = out / "digits_table_test.py"
    config.write_text(
        "from ttt_compile.configs import load_config\n\n\ndef get_config():\n"
        "    return load_config('digits_linear_attention').replace(name='digits_table_test', depth=1)\n"
    )
    result = dt.build_table(
        [str(config)],
        [3],
        out / "results",
        out / "runs",
        steps=2,
        floor_steps=40,
        floor_l2_grid=(0.0, 1e-2),
        run_plots=False,
        command="pytest",
        log=lambda *a: None,
    )
    return dt, out, result


def test_table_writes_mean_std_params_and_flops(table):
    _, out, result = table
    saved = json.loads((out / "results" / "results.json").read_text())
    assert saved["meta"]["seeds"] == [3] and saved["meta"]["steps"] == 2 and saved["meta"]["command"] == "pytest"
    rows = {r["config"]: r for r in saved["rows"]}
    assert set(rows) == {"digits_table_test", "logistic_regression"}
    for row in rows.values():
        for key in (
            "test_accuracy_mean",
            "test_accuracy_std",
            "params",
            "flops_per_example",
            "wall_s_mean",
            "wall_s_std",
            "per_seed_accuracy",
        ):
            assert key in row, key
        assert row["params"] > 0 and row["flops_per_example"] > 0
        assert row["test_accuracy_std"] == 0.0  # one seed
    vit = rows["digits_table_test"]
    assert vit["steps"] == 2 and vit["params"] == 19_402 - 8_448  # one block of the table's two fewer
    # 1 block of width 32 over 64 tokens: at least its dense projections and MLP, (4 + 4) * 64 * 32^2 MACs
    assert 2 * 8 * 64 * 32**2 < vit["flops_per_example"] < 2.5e6
    floor = rows["logistic_regression"]
    assert floor["params"] == 64 * 10 + 10 and floor["flops_per_example"] < 5e3
    # the seed override reached the config and its work folder
    run = next(r for r in saved["runs"] if r["config"] == "digits_table_test")
    assert run["seed"] == 3 and json.loads((Path(run["workdir"]) / "config.json").read_text())["seed"] == 3

    md = (out / "results" / "results.md").read_text()
    assert "| digits_table_test |" in md and "| logistic regression (raw pixels) |" in md
    assert "test accuracy (mean ± std)" in md and "params" in md and "forward FLOPs / example" in md
    assert f"{vit['test_accuracy_mean']:.4f} ± 0.0000" in md and f"{vit['params']:,}" in md
    assert "Command (from the repository root): `pytest`" in md and "CPU cores" in md
    assert (out / "results" / "accuracy.png").stat().st_size > 1000


def test_logistic_regression_floor_trains_above_chance(table):
    _, _, result = table
    floor = next(r for r in result["runs"] if r["config"] == "logistic_regression")
    assert floor["l2"] in (0.0, 1e-2)
    assert floor["test_accuracy"] > 0.8  # chance is 0.1; 40 full-batch Adam steps suffice
    assert floor["train_accuracy"] > 0.8


def test_claims_compare_mean_difference_with_seed_noise():
    dt = _load_script()

    def row(name, accs):
        mean, std = dt.mean_std(accs)
        return {
            "config": name,
            "seeds": list(range(len(accs))),
            "per_seed_accuracy": accs,
            "test_accuracy_mean": mean,
            "test_accuracy_std": std,
        }

    rows = [
        row("digits_linear_attention", [0.90, 0.91, 0.92]),
        row("digits_mttt_linear", [0.905, 0.91, 0.915]),
        row("digits_mttt_mlp", [0.95, 0.96, 0.97]),
        row("digits_mttt_mlp_sgd4", [0.80, 0.81, 0.82]),
    ]
    verdicts = {c["left"]: c["verdict"] for c in dt.compare(rows)}
    assert verdicts["digits_mttt_linear"].startswith("holds")  # ~ within noise
    assert verdicts["digits_mttt_mlp"] == "holds"  # > beyond noise
    assert verdicts["digits_mttt_mlp_sgd4"].startswith("does not hold")  # worse beyond noise


def test_rounding_divergence_of_equivalent_pairs():
    dt = _load_script()
    curve = [(20, 2.0), (40, 1.5), (60, 1.0)]
    runs = [
        {"config": "digits_linear_attention", "seed": 0, "test_accuracy": 0.9, "train_loss_curve": curve},
        {
            "config": "digits_mttt_linear",
            "seed": 0,
            "test_accuracy": 0.91,
            "train_loss_curve": [(20, 2.0), (40, 1.5 * (1 + 1e-6)), (60, 1.1)],
        },
        {"config": "digits_mttt_linear", "seed": 1, "test_accuracy": 0.9, "train_loss_curve": curve},
    ]
    (pair,) = dt.rounding_divergence(runs)  # seed 1 has no partner
    assert (pair["seed"], pair["first_log_rel_diff"], pair["first_step_rel_diff_above_1e-3"]) == (0, 0.0, 60)
    assert pair["test_accuracy"] == [0.91, 0.9]
    assert "| MTTT-Linear vs linear attention (identity) | 0 |" in dt.divergence_text([pair])
