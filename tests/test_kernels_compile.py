"""Every Triton kernel variant the launchers can pick compiles for the GPU targets (Hopper sm_90,
Ampere sm_80) with Triton's bundled ptxas: no GPU needed. The interpreter tests check what the
kernels compute; this catches what only the compiler sees (types across branches, atomics and cache
modifiers, shared memory over the limit, a dot that does not reach the tensor cores).

The compiler runs in a subprocess: this test session has TRITON_INTERPRET=1 set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # bytes of dynamic shared memory a block may use


@pytest.mark.parametrize("arch", [90, 80])
def test_every_kernel_variant_compiles(tmp_path, arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    proc = subprocess.run([sys.executable, str(ROOT / "benches" / "kernel_resources.py"), "--arch", str(arch), "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob(f"kernel-resources-sm{arch}-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) > 50
    failed = [f"{r['variant']}: {r['error']}" for r in rows if "error" in r]
    assert not failed, "\n".join(failed)
    for r in rows:
        assert 0 < r["registers"] <= 255, r
    # a block shape over the GPU's shared memory is skipped by the tuner there, but every kernel
    # keeps shapes that fit
    for kernel in {r["variant"].split()[0] for r in rows}:
        assert any(r["shared_bytes"] <= SHARED_LIMIT[arch] for r in rows if r["variant"].split()[0] == kernel), kernel
    # the dots reach the tensor cores: Hopper's warpgroup MMA for prefill's 64/128-row tiles, the
    # warp-level MMA for the 16-row tiles of decode and of the few-row projections (and everything
    # on Ampere)
    for r in rows:
        if r["variant"].startswith("_prefill_kernel"):
            assert r["mma"] == ("wgmma" if arch == 90 else "mma.sync"), r
        if r["variant"].startswith(("_decode_kernel", "_few_rows_kernel")):
            assert r["mma"] == "mma.sync", r
    # programmatic dependent launch (sm_90+ only): the variants that use it wait for the kernel
    # before them and let the next one launch; the others hold neither instruction
    gdc = [r for r in rows if "USE_GDC=True" in r["variant"]]
    assert bool(gdc) == (arch >= 90)
    for r in rows:
        want = ["griddepcontrol.wait", "griddepcontrol.launch_dependents"] if "USE_GDC=True" in r["variant"] else []
        assert r["grid_dependency"] == want, r
