"""The folders passes/ and models/ install as ttt_compile.passes / ttt_compile.models, from a built
wheel as well as from the editable install the suite runs on; nothing generic lands top-level."""

import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).parents[1]


def test_editable_install_maps_the_folders():
    import ttt_compile.models.layers as layers
    import ttt_compile.passes as passes

    assert pathlib.Path(passes.__file__).parent == ROOT / "passes"
    assert pathlib.Path(layers.__file__).parent == ROOT / "models"


def test_wheel_contains_and_imports_the_mapped_packages(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)], check=True
    )
    (wheel,) = tmp_path.glob("ttt_compile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ttt_compile/passes/fold_zero_init.py" in names and "ttt_compile/models/layers.py" in names
    assert not any(n.startswith(("passes/", "models/", "benchmarks/")) for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import ttt_compile, ttt_compile.passes as p, ttt_compile.models.layers as l; "
        "assert 'site' in ttt_compile.__file__, ttt_compile.__file__; print(sorted(p.available()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "fold_zero_init" in out.stdout
