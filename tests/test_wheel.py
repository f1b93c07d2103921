"""The built wheel holds the native module, the kernels and the bundled data, and works on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    maturin = shutil.which("maturin") or str(Path(sys.executable).with_name("maturin"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([maturin, "build", "--release", "-q", "-o", str(out)], cwd=ROOT, check=True, capture_output=True)
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.startswith("codellama_fast/_native") and n.endswith(".so") for n in names)
    assert "abi3" in wheel.name
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "NOTICE.md"):
        assert f"codellama_fast/data/codellama/{f}" in names
    assert "codellama_fast/py.typed" in names and "codellama_fast/_native.pyi" in names
    expected_dirs = {"codellama_fast/kernels/", "codellama_fast/engine/"}
    present = {d for d in expected_dirs if any(n.startswith(d) for n in names)}
    source_dirs = {d for d in expected_dirs if (ROOT / "python" / d).is_dir()}
    assert present == source_dirs
    if (ROOT / "python/codellama_fast/data/stories260K").is_dir():
        assert any(n.startswith("codellama_fast/data/stories260K/") for n in names)


def test_installed_wheel_works_offline_from_elsewhere(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    code = (
        "import codellama_fast, sys; t = codellama_fast.CodeLlamaTokenizerFast.from_pretrained(); "
        "assert codellama_fast.__file__.startswith(sys.argv[1]), codellama_fast.__file__; "
        "print(t.encode(' Hello'))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[1, 29871, 15043]"
