"""The prepared accelerator benchmark (`ttt-compile bench --device`): its pieces on CPU, and (slow) the
whole `--tiny` run."""

import json

import pytest

from ttt_compile import cli
from ttt_compile.benchmarks import device


def test_peak_table_matches_device_kinds_and_says_unknown_otherwise():
    assert device.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert device.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device.peak_tflops("NVIDIA H200") == 989.0
    assert device.peak_tflops("TPU v5 lite") == 197.0
    assert device.peak_tflops("TPU v5") == 459.0
    assert device.peak_tflops("cpu") is None


def test_self_attention_pixel_memory_is_the_n_squared_formula():
    m = device.attention_memory(device.SIZES["full"]["pixels"])
    assert m["tokens"] == 50176
    assert m["memory_per_image_bytes"] == 12 * 3 * 50176**2 * 2  # depth * H * n^2 bf16 values
    assert m["scores_one_layer_bytes"] == 3 * 50176**2 * 2
    assert "not run" in m["status"]


def test_plan_covers_every_measurement_of_the_issue():
    names = [j["name"] for j in device.plan("full")]
    assert names[0] == "info"
    assert set(device.VIT_LAYERS) <= set(names)
    assert {f"{c} n={n}" for c in device.CAUSAL for n in (4096, 16384)} <= set(names)
    assert [j["layer"] for j in device.plan("full") if j["part"] == "pixels"] == ["MTTT-Linear", "MTTT-MLP T=1"]


def test_a_failing_or_slow_measurement_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    timed_out = device.run_subprocess({"part": "info", "name": "info", "mode": "tiny"}, limit=0.3)
    assert timed_out["status"] == "failed" and "timed out after 0 s" in timed_out["error"]
    jobs = [
        {"part": "info", "name": "info"},
        {"part": "vit", "name": "no such layer", "layer": "no such layer"},
        {
            "part": "causal",
            "name": "chunked causal linear attention (chunk 64) n=128",
            "layer": "chunked causal linear attention (chunk 64)",
            "n": 128,
        },
    ]
    monkeypatch.setattr(device, "plan", lambda mode: [{**j, "mode": mode} for j in jobs])
    code = cli.main(["bench", "--device", "--tiny", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["info"]["status"] == "ok" and results["info"]["device_kind"] == "cpu"
    assert results["info"]["versions"]["jax"] and results["info"]["peak_bf16_tflops"] is None
    (failed,) = results["vit"]
    assert failed["status"] == "failed" and "KeyError" in failed["error"] and "no such layer" in failed["error"]
    (causal,) = results["causal"]
    assert causal["status"] == "ok" and causal["tokens_per_s"] > 0 and causal["flops_per_step"] > 0
    assert causal["fraction_of_peak"] == "unknown" and causal["peak_bytes"] > 0
    assert "compiled memory analysis" in causal["memory_source"]
    assert results["pixels"][-1]["name"] == "self-attention" and "formula" in results["pixels"][-1]
    md = (tmp_path / "results.md").read_text()
    assert "| no such layer |" in md and "failed: exit status 1" in md
    assert "| chunked causal linear attention (chunk 64) | 128 |" in md


def test_bad_arguments_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--device", "--budget", "-1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_tiny_device_benchmark_writes_every_figure(tmp_path):
    results = device.run(tmp_path, tiny=True, budget_s=900)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["mode"] == "tiny" and on_disk["info"]["status"] == "ok"
    assert [r["name"] for r in on_disk["vit"]] == list(device.VIT_LAYERS)
    for r in on_disk["vit"] + on_disk["pixels"][:-1]:
        assert r["status"] == "ok", r
        assert r["images_per_s"] > 0 and r["tflops"] > 0 and r["peak_bytes"] > 0
        assert r["compute_dtype"] == "bfloat16" and r["master_dtype"] == "float32"
    assert len(on_disk["causal"]) == 2 * len(device.CAUSAL)
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in on_disk["causal"])
    md = (tmp_path / "results.md").read_text()
    for layer in device.VIT_LAYERS:
        assert f"| {layer} |" in md
    assert results["wall_s"] < 900
