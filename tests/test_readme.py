"""The README's Python examples run as written (docs that work)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_python_block_runs(index):
    code = _blocks()[index]
    if "Engine" in code:
        pytest.importorskip("torch")
    exec(compile(code, f"README.md block {index}", "exec"), {})


def test_readme_has_exactly_two_setup_commands():
    text = README.read_text()
    setup = text.split("## Set-up: two commands", 1)[1].split("##", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert [l.split("#")[0].strip() for l in block.strip().splitlines()] == ["make demo", "make test"]
