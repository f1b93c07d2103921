"""Shared benchmark plumbing: timing with percentiles, machine/version facts, JSON rows."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"


def git_sha() -> str:
    # set by scripts/gpu_run.sh: the commit the carried wheel was built from (`make gpu-prep`),
    # which a copied tree's own git state need not match
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(*names: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "absent"
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    return info


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        if len(s) == 1:
            return s[0]
        k = (len(s) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"p20": q(0.2), "p50": q(0.5), "p80": q(0.8), "n": len(s)}


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_cycling(call: Callable[[Any], Any], items: list[Any], calls: int, repeats: int = 3) -> list[float]:
    """Seconds per call of call(item) over `calls` calls, each on the next of `items` (copies spread
    over more memory than the CPU caches hold, so each call reads from memory, as a decode step
    reads each weight or layer's cache once); `repeats` samples after one warm-up pass."""
    def run() -> None:
        for i in range(calls):
            call(items[i % len(items)])

    return [s / calls for s in time_call(run, repeats=repeats)]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def result_path(name: str, out_dir: Path | None = None) -> Path:
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return out_dir / f"{name}-{stamp}.json"


def write_results(name: str, meta: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path | None = None, path: Path | None = None) -> Path:
    """Writes {"meta", "rows"} JSON (to `path` when given: benchmarks rewrite it as rows arrive,
    so a run cut short still leaves its results)."""
    path = path or result_path(name, out_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, ensure_ascii=False))
    os.replace(tmp, path)
    return path


class LiveRows(list):
    """A list of result rows that rewrites its JSON file after every append."""

    def __init__(self, meta: dict[str, Any], path: Path) -> None:
        super().__init__()
        self.meta, self.path = meta, path

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        write_results("", self.meta, self, path=self.path)
