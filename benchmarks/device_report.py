"""`results.md` of the device benchmark (`device`): its results dict rendered as tables, one per
part (ViT step, raw pixels, causal LM layer, ours vs the ttt-lm-jax peer), with the device and versions the figures came from."""

from __future__ import annotations


def _num(x, fmt: str = ",.1f", none: str = "-") -> str:
    if x is None:
        return none
    if isinstance(x, str):
        return x
    return format(x, fmt)


def _gib(b) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"


def _model(size: dict) -> str:
    """'ViT-S/16', with the overridden dimensions of a --tiny model."""
    shrunk = ", ".join(f"{k} {v}" for k, v in size["dims"].items())
    return f"ViT-{size['variant']}/{size['patch']}" + (f" (shrunk: {shrunk})" if shrunk else "")


def _status(r: dict) -> str:
    return "ok" if r.get("status") == "ok" else f"{r.get('status')}: {r.get('error', '')}".replace("\n", " ")[:200]


def markdown(results: dict) -> str:
    info = results.get("info") or {}
    v = info.get("versions") or {}
    s = results["sizes"]
    lines = [
        f"# Device benchmark ({results['mode']}, {results['date']})",
        "",
        f"Command: `{results['command']}`. Wall time {results['wall_s']:.0f} s (budget {results['budget_s']:.0f} s; "
        f"limits per measurement {results['limits_s']}).",
        "",
    ]
    if info.get("status") == "ok":
        lines += [
            f"Device: {info['device_kind']} ({info['platform']}, {info['device_count']} device(s); "
            f"platform version {info.get('platform_version')}; nvidia-smi: {info.get('nvidia_smi')}; "
            f"memory limit {_gib(info.get('memory_limit_bytes'))}); host {info.get('host')}.",
            "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
            f"bf16 peak used for the fraction: {_num(info.get('peak_bf16_tflops'), '.0f', 'unknown')} TFLOP/s "
            "(vendor data sheet, dense; 'unknown' when the device kind is not in the table).",
            "",
        ]
    else:
        lines += [f"Device information: {_status(info)}", ""]
    if results["mode"] == "tiny":
        lines += [
            "**--tiny**: shrunken models and sequences for a CPU smoke run; the figures describe "
            "nothing about an accelerator or the paper's models.",
            "",
        ]
    vs = s["vit"]
    lines += [
        f"## {_model(vs)} at {vs['image']}x{vs['image']}: one training step "
        f"(batch {vs['batch']}, bf16 compute, f32 master weights, AdamW)",
        "",
        "| layer | images/s | TFLOP/s | fraction of peak | GFLOP/step | peak memory | compile s | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["vit"]:
        ok = r.get("status") == "ok"
        lines.append(
            f"| {r['name']} | {_num(r.get('images_per_s')) if ok else '-'} | "
            f"{_num(r.get('tflops'), '.3f') if ok else '-'} | "
            f"{_num(r.get('fraction_of_peak'), '.3f') if ok else '-'} | "
            f"{_num(r['flops_per_step'] / 1e9, ',.4g') if ok else '-'} | "
            f"{_gib(r.get('peak_bytes')) if ok else '-'} | {_num(r.get('compile_s')) if ok else '-'} | "
            f"{_status(r)} |"
        )
    ps = s["pixels"]
    n_pix = (ps["image"] // ps["patch"]) ** 2
    lines += [
        "",
        f"## {_model(ps)} on raw {ps['image']}x{ps['image']} pixels (n = {n_pix:,}): training step, "
        f"batch {ps['batch']}",
        "",
        "| layer | images/s | memory per image | TFLOP/s | compile s | status |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["pixels"]:
        if r.get("status") == "ok":
            lines.append(
                f"| {r['name']} | {_num(r['images_per_s'], ',.3f')} | {_gib(r['memory_per_image_bytes'])} | "
                f"{_num(r['tflops'], '.3f')} | {_num(r['compile_s'])} | ok |"
            )
        elif "formula" in r:
            lines.append(
                f"| {r['name']} | not run | {_gib(r['memory_per_image_bytes'])} (attention "
                f"probabilities kept for backward: {r['formula']}; one layer's scores "
                f"{_gib(r['scores_one_layer_bytes'])}) | - | - | {r['status']} |"
            )
        else:
            lines.append(f"| {r['name']} | - | - | - | - | {_status(r)} |")
    cs = s["causal"]
    lines += [
        "",
        f"## Causal LM layer (d = {cs['dim']}, H = {cs['heads']}, float32): training step over "
        f"{cs['batch']} sequence(s)",
        "",
        "| layer | n | tokens/s | x chunked causal linear attention | TFLOP/s | peak memory | status |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base = {
        r["n"]: r.get("tokens_per_s")
        for r in results["causal"]
        if r["name"].startswith("chunked") and r.get("status") == "ok"
    }
    for r in results["causal"]:
        ok = r.get("status") == "ok"
        rel = r["tokens_per_s"] / base[r["n"]] if ok and base.get(r["n"]) else None
        lines.append(
            f"| {r['name'].rsplit(' n=', 1)[0]} | {r['n']:,} | {_num(r.get('tokens_per_s'), ',.0f') if ok else '-'} | "
            f"{_num(rel, '.3f')} | {_num(r.get('tflops'), '.3f') if ok else '-'} | "
            f"{_gib(r.get('peak_bytes')) if ok else '-'} | {_status(r)} |"
        )
    tl = s.get("ttt_lm_jax")
    if tl and results.get("ttt_lm_jax"):
        lines += [
            "",
            f"## Ours vs the ttt-lm-jax peer layers (d = {tl['dim']}, H = {tl['heads']}, n = {tl['n']:,}, "
            f"float32): training step, batch {tl['batch']}, interleaved in one process",
            "",
            "| layer | time ours/peer (25th-75th) | tokens/s ours | tokens/s peer | GFLOP ours / peer | "
            "temp memory ours / peer | rel. err out / grad | status |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["ttt_lm_jax"]:
            if r.get("status") != "ok":
                lines.append(f"| {r['name']} | - | - | - | - | - | - | {_status(r)} |")
                continue
            o, q, same = r["ours"], r["peer"], r["same"]
            lines.append(
                f"| {r['name']} | {r['ratio']:.3f} ({r['ratio_q25']:.2f}-{r['ratio_q75']:.2f}) | "
                f"{_num(r['tokens_per_s_ours'], ',.0f')} | {_num(r['tokens_per_s_peer'], ',.0f')} | "
                f"{o['flops'] / 1e9:,.4g} / {q['flops'] / 1e9:,.4g} | {_gib(o['temp_bytes'])} / {_gib(q['temp_bytes'])} | "
                f"{same['output']:.1e} / {_num(same.get('grads'), '.1e')} | ok |"
            )
    lines += [
        "",
        "Memory: `device.memory_stats()['peak_bytes_in_use']` of the measurement's own process where the "
        "backend reports it, else XLA's compiled memory analysis (arguments + outputs + temp). FLOPs: XLA "
        "cost analysis of the compiled step, loop trip counts included (`ttt_compile.cost`).",
    ]
    return "\n".join(lines) + "\n"
