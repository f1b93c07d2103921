"""Peak resident memory of `codellama-fast convert` (Meta -> HF) on a multi-GB synthetic checkpoint
in Meta's layout, against the checkpoint's size and its largest merged tensor.

    python benches/bench_convert.py [--layers 6] [--shards 2] [--workdir /tmp/clf-convert-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_sha, machine, now, versions, write_results  # noqa: E402


def make_checkpoint(folder: Path, layers: int, shards: int, dim: int = 5120, heads: int = 40, ffn: int = 13824, vocab: int = 32016) -> int:
    """Writes consolidated.NN.pth shards of 13B-shaped layers (bf16, random); returns total bytes."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * 0.02).to(torch.bfloat16)

    for k in range(shards):
        sd = {"tok_embeddings.weight": r(vocab, dim // shards), "norm.weight": torch.ones(dim, dtype=torch.bfloat16),
              "output.weight": r(vocab // shards if vocab % shards == 0 else vocab, dim)}
        for i in range(layers):
            p = f"layers.{i}."
            sd.update({p + "attention.wq.weight": r(dim // shards, dim), p + "attention.wk.weight": r(dim // shards, dim),
                       p + "attention.wv.weight": r(dim // shards, dim), p + "attention.wo.weight": r(dim, dim // shards),
                       p + "feed_forward.w1.weight": r(ffn // shards, dim), p + "feed_forward.w2.weight": r(dim, ffn // shards),
                       p + "feed_forward.w3.weight": r(ffn // shards, dim),
                       p + "attention_norm.weight": torch.ones(dim, dtype=torch.bfloat16), p + "ffn_norm.weight": torch.ones(dim, dtype=torch.bfloat16)})
        torch.save(sd, folder / f"consolidated.{k:02d}.pth")
        del sd
    (folder / "params.json").write_text(json.dumps({"dim": dim, "n_layers": layers, "n_heads": heads, "multiple_of": 256,
                                                    "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 1000000.0, "vocab_size": -1}))
    return sum(f.stat().st_size for f in folder.glob("consolidated.*.pth"))


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/clf-convert-bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    src, dst = args.workdir / "meta", args.workdir / "hf"
    shutil.rmtree(args.workdir, ignore_errors=True)
    ckpt_bytes = make_checkpoint(src, args.layers, args.shards)
    # VmHWM (peak RSS of this process image) read by the child itself: ru_maxrss would carry the
    # parent's peak across fork/exec.
    hwm = "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    code = ("import torch; from codellama_fast.convert import convert_meta; "
            f"convert_meta({str(src)!r}, {str(dst)!r}, dtype=torch.float16, progress=False); " + hwm)
    base = subprocess.run([sys.executable, "-c", "import torch, codellama_fast.convert; " + hwm], capture_output=True, text=True, check=True)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    peak = int(res.stdout.strip().splitlines()[-1]) * 1024
    baseline = int(base.stdout.strip()) * 1024
    largest = 32016 * 5120 * 2  # the merged embedding / LM head (bf16 in, fp16 out)
    out_bytes = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
    meta = {"bench": "convert", "machine": machine(), "versions": versions("torch", "safetensors", "codellama-fast"), "git_sha": git_sha(), "timestamp": now()}
    row = {"bench": "convert_meta", "provider": "codellama-fast", "metric": "peak_rss", "unit": "bytes", "p50": peak,
           "checkpoint_bytes": ckpt_bytes, "output_bytes": out_bytes, "peak_over_checkpoint": peak / ckpt_bytes,
           "import_baseline_rss": baseline, "peak_minus_baseline": peak - baseline, "largest_merged_tensor_bytes": largest, "peak_minus_baseline_over_largest": (peak - baseline) / largest,
           "seconds": elapsed, "shape": f"13B-shaped, {args.layers} layers, {args.shards} shards, bf16 -> fp16"}
    print(json.dumps(row, indent=1))
    path = write_results("convert", meta, [row], args.out)
    shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
