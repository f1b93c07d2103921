"""Compiles every Triton kernel variant the launchers can pick for an NVIDIA target, without a GPU
(Triton's bundled ptxas), and reports registers, spill stack and shared memory per variant. The
interpreter checks the kernels' arithmetic; this checks that they compile for the real target and
how heavy they are there (a spilling variant is a slow one).

    python benches/kernel_resources.py [--arch 90] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


@dataclass
class Variant:
    kernel: str  # module:function
    types: dict[str, str]  # non-constexpr argument -> Triton type ("*fp16", "i32", "fp32", ...)
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 2
    # integer arguments that are multiples of 16 at run time (strides, model sizes): Triton
    # specialises such launches (and 16-byte-aligned pointers, assumed for every pointer), which
    # is what lets it vectorise the loads
    div16: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        flags = " ".join(f"{k}={v}" for k, v in self.constexprs.items())
        return f"{self.kernel.split(':')[1]} {flags} warps={self.num_warps} stages={self.num_stages}"


def _fn(variant: Variant):
    import importlib

    module, name = variant.kernel.split(":")
    return getattr(importlib.import_module(module), name)


def _strides(fn) -> frozenset[str]:
    return frozenset(n for n in fn.arg_names if n.startswith("stride_") or re.fullmatch(r"s[a-z]{1,3}", n))


def _types(fn, f16: set[str], i64p: set[str] = frozenset(), f32p: set[str] = frozenset(), i32p: set[str] = frozenset(),
           f32: set[str] = frozenset(), constexpr: set[str] = frozenset()) -> dict[str, str]:
    out = {}
    for n in fn.arg_names:
        if n in constexpr:
            continue
        out[n] = ("*fp16" if n in f16 else "*i64" if n in i64p else "*fp32" if n in f32p else "*i32" if n in i32p
                  else "fp32" if n in f32 else "i32")
    return out


def variants(arch: int = 90) -> list[Variant]:
    """The configurations the launchers use on a GPU: the tuned candidates and the fixed ones (with
    programmatic dependent launch, USE_GDC, on sm_90 and up)."""
    from codellama_fast.kernels import attention_decode, attention_prefill, attention_shared_decode, gemv, rmsnorm, rope, swiglu

    out: list[Variant] = []
    k = "codellama_fast.kernels.attention_prefill:_prefill_kernel"
    fn = attention_prefill._prefill_kernel
    t = _types(fn, {"Q", "KC", "VC", "O"}, i64p={"KV_START"}, f32={"qk_scale"}, constexpr={"D", "BLOCK_M", "BLOCK_N", "IEEE", "SPLIT_LOOPS"})
    for c in attention_prefill.PREFILL_CONFIGS:
        out.append(Variant(k, t, dict(D=128, IEEE=False, **c.kwargs), c.num_warps, c.num_stages, _strides(fn)))
    k = "codellama_fast.kernels.attention_decode:_decode_kernel"
    fn = attention_decode._decode_kernel
    t = _types(fn, {"Q", "K_NEW", "V_NEW", "KC", "VC", "O"}, i64p={"POS", "SLOT", "KV_START"},
               f32p={"M_WS", "L_WS", "ACC_WS", "INV_FREQ"}, i32p={"KV_LEN", "COUNT"}, f32={"qk_scale"},
               constexpr={"GROUP", "D", "BLOCK_G", "BLOCK_N", "BLOCK_S", "FUSE_ROPE", "SINGLE", "IEEE", "MERGE_LAST",
                          "MERGE_S"})
    gdc_options = (False, True) if arch >= 90 else (False,)
    for stages in (2, 3):
        for fuse in (True, False):
            for single, merge_last in ((True, True), (False, True), (False, False)):
                for group in (1, 8):
                    for gdc in gdc_options if fuse else (False,):  # the engine's step is the fused one
                        out.append(Variant(k, t, dict(GROUP=group, D=128, BLOCK_G=16, BLOCK_N=64, BLOCK_S=64, FUSE_ROPE=fuse,
                                                      SINGLE=single, IEEE=False, MERGE_LAST=merge_last,
                                                      MERGE_S=attention_decode.MERGE_SPLITS, USE_GDC=gdc), 4, stages,
                                           _strides(fn)))
    k = "codellama_fast.kernels.attention_decode:_merge_kernel"
    fn = attention_decode._merge_kernel
    t = _types(fn, {"O"}, i64p={"KV_START"}, f32p={"M_WS", "L_WS", "ACC_WS"}, i32p={"KV_LEN"},
               constexpr={"FUSED", "D", "BLOCK_N", "BLOCK_S", "MERGE_S"})
    for fused in (1, 0):
        out.append(Variant(k, t, dict(FUSED=fused, D=128, BLOCK_N=64, BLOCK_S=64, MERGE_S=attention_decode.MERGE_SPLITS),
                           4, 2, _strides(fn)))
    k = "codellama_fast.kernels.attention_shared_decode:_part_kernel"
    fn = attention_shared_decode._part_kernel
    t = _types(fn, {"Q", "KC", "VC"}, i64p={"KV_START"}, f32p={"M_WS", "L_WS", "ACC_WS"}, i32p={"LO", "HI"}, f32={"qk_scale"},
               constexpr={"GROUP", "D", "BLOCK_Q", "BLOCK_N", "IEEE"})
    for group in (1, 8):
        for tile in (16, 32, 64):
            for warps in (4, 8):  # the launcher takes 8 for 64 rows, else 4
                out.append(Variant(k, t, dict(GROUP=group, D=128, BLOCK_Q=tile, BLOCK_N=64, IEEE=False), warps, 2, _strides(fn)))
    k = "codellama_fast.kernels.attention_shared_decode:_merge_kernel"
    fn = attention_shared_decode._merge_kernel
    t = _types(fn, {"O"}, f32p={"M_WS", "L_WS", "ACC_WS"}, constexpr={"D", "BLOCK_S", "MERGE_S"})
    out.append(Variant(k, t, dict(D=128, BLOCK_S=128, MERGE_S=attention_shared_decode.MERGE_SPLITS), 4, 2, _strides(fn)))
    k = "codellama_fast.kernels.gemv:_gemv_kernel"
    fn = gemv._gemv_kernel
    t = _types(fn, {"X", "W", "Y", "RES", "NORM_W"}, f32={"eps"},
               constexpr={"PRE_NORM", "SWIGLU", "ADD_RES", "BLOCK_N", "BLOCK_K", "USE_GDC"})
    for flags in (dict(PRE_NORM=True, SWIGLU=False, ADD_RES=False), dict(PRE_NORM=True, SWIGLU=True, ADD_RES=False),
                  dict(PRE_NORM=False, SWIGLU=False, ADD_RES=True)):
        for gdc in gdc_options:
            for c in gemv.GEMV_CONFIGS:
                out.append(Variant(k, t, dict(flags, **c.kwargs, USE_GDC=gdc), c.num_warps, 3, _strides(fn) | {"K", "N"}))
    k = "codellama_fast.kernels.gemv:_few_rows_kernel"
    fn = gemv._few_rows_kernel
    t = _types(fn, {"X", "W", "Y", "RES", "NORM_W"}, f32={"eps"},
               constexpr={"PRE_NORM", "SWIGLU", "ADD_RES", "IEEE", "BLOCK_M", "BLOCK_N", "BLOCK_K"})
    for flags in (dict(PRE_NORM=True, SWIGLU=False, ADD_RES=False), dict(PRE_NORM=True, SWIGLU=True, ADD_RES=False),
                  dict(PRE_NORM=False, SWIGLU=False, ADD_RES=True)):
        for c in gemv.FEW_ROWS_CONFIGS:
            out.append(Variant(k, t, dict(flags, IEEE=False, BLOCK_M=16, **c.kwargs), c.num_warps, c.num_stages,
                               _strides(fn) | {"K", "N"}))
    k = "codellama_fast.kernels.rmsnorm:_rmsnorm_kernel"
    fn = rmsnorm._rmsnorm_kernel
    t = _types(fn, {"X", "R", "W", "Y", "S"}, f32={"eps"}, constexpr={"HAS_RESIDUAL", "BLOCK", "ROWS"})
    for block in (4096, 8192):
        for res in (False, True):
            out.append(Variant(k, t, {"HAS_RESIDUAL": res, "BLOCK": block, "ROWS": 1}, rmsnorm.num_warps(block), 3,
                               _strides(fn) | {"C"}))
    k = "codellama_fast.kernels.rope:_rope_cache_kernel"
    fn = rope._rope_cache_kernel
    t = _types(fn, {"Q", "K", "V", "QO", "KC", "VC"}, i64p={"POS", "SLOTS"}, f32p={"INV_FREQ"}, constexpr={"HALF", "BLOCK_H"})
    for block_h in (16, 8):
        out.append(Variant(k, t, dict(HALF=64, BLOCK_H=block_h), 4, 3, _strides(fn)))
    k = "codellama_fast.kernels.swiglu:_swiglu_kernel"
    fn = swiglu._swiglu_kernel
    t = _types(fn, {"GU", "OUT"}, constexpr={"BLOCK"})
    for block, warps in ((4096, 8), (1024, 4)):
        out.append(Variant(k, t, dict(BLOCK=block), warps, 3, _strides(fn) | {"F"}))
    return out


def compile_variant(v: Variant, arch: int = 90):
    fn = _fn(v)
    names = fn.arg_names
    signature = {n: ("constexpr" if n in v.constexprs else v.types[n]) for n in names}
    constexprs = {(names.index(n),): val for n, val in v.constexprs.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if n not in v.constexprs and (v.types[n].startswith("*") or n in v.div16)}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps, "num_stages": v.num_stages})


def resources(compiled) -> dict[str, int]:
    """Registers and stack (spill) bytes per thread from the cubin, dynamic shared memory bytes."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        text = subprocess.run([str(tool), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    if m is None:
        raise RuntimeError(f"no resource line in cuobjdump output: {text[-300:]}")
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2)), "shared_bytes": int(compiled.metadata.shared)}


def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability × 10 (80 = A100, 90 = H100/H200)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from common import machine, now, versions, write_results, git_sha

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("kernel_resources compiles for the GPU: run it without TRITON_INTERPRET=1")
    rows = []
    for v in variants(args.arch):
        row: dict[str, Any] = {"bench": "kernel_resources", "variant": v.label, "arch": f"sm_{args.arch}"}
        try:
            compiled = compile_variant(v, args.arch)
            ptx = compiled.asm["ptx"]
            row.update(resources(compiled), mma="wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else None,
                       grid_dependency=[op for op in ("griddepcontrol.wait", "griddepcontrol.launch_dependents") if op in ptx])
            print(f"{v.label:110s} regs {row['registers']:3d}  spill stack {row['stack_bytes']:5d} B  shared {row['shared_bytes']:6d} B", flush=True)
        except Exception as exc:  # noqa: BLE001  (recorded per variant; the run goes on)
            row["error"] = f"{type(exc).__name__}: {str(exc)[-500:]}"
            print(f"{v.label:110s} FAILED {row['error']}", flush=True)
        rows.append(row)
    meta = {"machine": machine(), "versions": versions("torch", "triton"), "git_sha": git_sha(), "timestamp": now(),
            "note": "compiled without a GPU; nothing was run"}
    path = write_results(f"kernel-resources-sm{args.arch}", meta, rows, out_dir=args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
