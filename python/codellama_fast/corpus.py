"""Code corpora found on the machine, for exactness tests and benchmarks (no downloads).

``python_stdlib()`` is every ``.py`` file of the running interpreter's standard library (without
site-packages); ``other_code()`` is C/C++ headers and sources present on the machine, a second
corpus that is not Python.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


def _read_all(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for p in sorted(paths):
        try:
            out.append((str(p), p.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib test files are deliberately not UTF-8
    return out


def python_stdlib() -> list[tuple[str, str]]:
    """(path, text) of every UTF-8 ``.py`` file of the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts and "dist-packages" not in p.relative_to(root).parts]
    return _read_all(files)


def other_code(limit_bytes: int = 8_000_000) -> list[tuple[str, str]]:
    """(path, text) of C/C++ sources and headers on the machine (``/usr/include`` and the Python
    headers), up to ``limit_bytes``."""
    roots = [Path("/usr/include"), Path(sysconfig.get_paths()["include"])]
    files: list[Path] = []
    for r in roots:
        if r.is_dir():
            files.extend(p for p in r.rglob("*") if p.suffix in {".h", ".hpp", ".c", ".cc", ".cpp"} and p.is_file())
    out, total = [], 0
    for path, text in _read_all(files):
        if total >= limit_bytes:
            break
        out.append((path, text))
        total += len(text.encode("utf-8"))
    return out
