"""Tokenizer throughput: codellama-fast vs sentencepiece, HF `tokenizers` and transformers'
CodeLlamaTokenizerFast, on the same corpora in one run (encode/decode, single text and batch,
padded batch tensors), plus exactness against sentencepiece and a length-scaling check.

    python benches/bench_tokenizer.py [--corpus-mb 8] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_sha, machine, now, percentiles, time_call, versions, write_results  # noqa: E402

from codellama_fast import CodeLlamaTokenizerFast  # noqa: E402
from codellama_fast.corpus import other_code, python_stdlib  # noqa: E402
from codellama_fast.data import CODELLAMA_TOKENIZER_DIR  # noqa: E402

SPECIALS = ("<s>", "</s>", "<unk>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>", "<FILL_ME>")


def take(files: list[tuple[str, str]], limit_mb: float) -> list[str]:
    out, total = [], 0
    for _, text in files:
        if any(s in text for s in SPECIALS):
            continue  # plain text only: every provider must produce the same ids
        out.append(text)
        total += len(text.encode("utf-8"))
        if total >= limit_mb * 1e6:
            break
    return out


def chunks(texts: list[str], size: int) -> list[str]:
    return [t[i : i + size] for t in texts for i in range(0, len(t), size)]


class Providers:
    """Each provider: name -> dict of operations (encode_one, encode_batch, decode_one, decode_batch, padded)."""

    def __init__(self, threads: int) -> None:
        import sentencepiece as spm
        import tokenizers
        import transformers

        path = CODELLAMA_TOKENIZER_DIR
        self.ours = CodeLlamaTokenizerFast.from_pretrained()
        self.ours_pad = CodeLlamaTokenizerFast.from_pretrained(pad_token="</s>")
        self.sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
        self.hf_tok = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tf = transformers.CodeLlamaTokenizerFast.from_pretrained(str(path))
        self.tf.pad_token = self.tf.eos_token
        self.threads = threads

    def table(self) -> dict[str, dict[str, Callable[..., Any]]]:
        sp, hf, tf, ours, ours_pad, th = self.sp, self.hf_tok, self.tf, self.ours, self.ours_pad, self.threads
        return {
            "codellama-fast": {
                "encode_one": lambda ts: [ours.encode(t) for t in ts],
                "encode_batch": lambda ts: ours(ts)["input_ids"],
                "decode_one": lambda ids: [ours.decode(i) for i in ids],
                "decode_batch": lambda ids: ours.batch_decode(ids),
                "padded_np": lambda ts: ours_pad(ts, padding=True, return_tensors="np"),
                "padded_pt": lambda ts: ours_pad(ts, padding=True, return_tensors="pt"),
            },
            "sentencepiece": {
                "encode_one": lambda ts: [[1] + sp.encode(t) for t in ts],
                "encode_batch": lambda ts: [[1] + r for r in sp.encode(ts, num_threads=th)],
                "decode_one": lambda ids: [sp.decode(i) for i in ids],
                "decode_batch": lambda ids: sp.decode(ids, num_threads=th),
            },
            "tokenizers": {
                "encode_one": lambda ts: [hf.encode(t).ids for t in ts],
                "encode_batch": lambda ts: [e.ids for e in hf.encode_batch(ts)],
                "decode_one": lambda ids: [hf.decode(i) for i in ids],
                "decode_batch": lambda ids: hf.decode_batch(ids),
            },
            "transformers": {
                "encode_one": lambda ts: [tf.encode(t) for t in ts],
                "encode_batch": lambda ts: tf(ts)["input_ids"],
                "decode_one": lambda ids: [tf.decode(i) for i in ids],
                "decode_batch": lambda ids: tf.batch_decode(ids),
                "padded_np": lambda ts: tf(ts, padding=True, return_tensors="np"),
                "padded_pt": lambda ts: tf(ts, padding=True, return_tensors="pt"),
            },
        }


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-mb", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--memory-calls", type=int, default=1_000_000, help="encode calls of the memory check (0 skips it)")
    ap.add_argument("--max-doc-bytes", type=int, default=10_000_000, help="largest document of the length-scaling check")
    ap.add_argument("--providers", default="codellama-fast,sentencepiece,tokenizers,transformers")
    args = ap.parse_args(argv)

    threads = os.cpu_count() or 1
    prov = Providers(threads)
    table = {k: v for k, v in prov.table().items() if k in args.providers.split(",")}
    corpora = {"python-stdlib": take(python_stdlib(), args.corpus_mb), "c-headers": take(other_code(), args.corpus_mb / 2)}
    rows: list[dict[str, Any]] = []
    meta = {
        "bench": "tokenizer",
        "machine": machine(),
        "versions": versions("codellama-fast", "sentencepiece", "tokenizers", "transformers", "numpy"),
        "git_sha": git_sha(),
        "timestamp": now(),
        "threads": threads,
    }

    def row(bench: str, provider: str, corpus: str, nbytes: int, secs: list[float], extra: dict[str, Any] | None = None) -> None:
        mbps = [nbytes / s / 1e6 for s in secs]
        r = {"bench": bench, "provider": provider, "metric": "throughput", "unit": "MB/s", "shape": corpus,
             **percentiles(mbps), "device": "cpu", "dtype": "n/a", "bytes": nbytes,
             "versions": meta["versions"], "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]}
        r.update(extra or {})
        rows.append(r)
        print(f"{bench:14s} {corpus:14s} {provider:15s} {r['p50']:8.2f} MB/s", flush=True)

    for corpus, texts in corpora.items():
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        ids = [[1] + x for x in prov.sp.encode(texts)]
        reference = ids
        mismatches = sum(a != b for a, b in zip(prov.ours(texts)["input_ids"], reference))
        rows.append({"bench": "exactness", "provider": "codellama-fast", "metric": "mismatching_texts_vs_sentencepiece",
                     "unit": "count", "shape": corpus, "p50": mismatches, "texts": len(texts), "bytes": nbytes,
                     "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
        print(f"exactness {corpus}: {mismatches} mismatching texts of {len(texts)} ({nbytes/1e6:.1f} MB)")
        if "codellama-fast" in table:
            # Cold: a fresh tokenizer each time, so no chunk is cached yet (the first pass a user sees).
            cold = []
            for _ in range(args.repeats):
                fresh = CodeLlamaTokenizerFast.from_pretrained()
                cold.append(time_call(lambda: [fresh.encode(t) for t in texts], 1, warmup=0)[0])
            row("encode_one_cold", "codellama-fast", corpus, nbytes, cold)
        for name, ops in table.items():
            for op in ("encode_one", "encode_batch"):
                row(op, name, corpus, nbytes, time_call(lambda: ops[op](texts), args.repeats))
            for op in ("decode_one", "decode_batch"):
                row(op, name, corpus, nbytes, time_call(lambda: ops[op](ids), args.repeats))
        # Batches of 4 KB chunks to one padded [batch, length] array (what a model consumes).
        pieces = chunks(texts, 4096)[:2048]
        pbytes = sum(len(t.encode("utf-8")) for t in pieces)
        for name, ops in table.items():
            for op in ("padded_np", "padded_pt"):
                if op in ops:
                    row(op, name, corpus, pbytes, time_call(lambda: ops[op](pieces), args.repeats),
                        {"batch": len(pieces), "chunk_chars": 4096})

    # Length scaling: one document of growing size (a cache cannot help: every size is new text).
    base = "".join(corpora["python-stdlib"])
    for size in [n for n in (1_000, 100_000, 1_000_000, 10_000_000) if n <= args.max_doc_bytes]:
        doc = (base * (1 + size // max(1, len(base))))[:size]
        for name in ("codellama-fast", "sentencepiece"):
            if name in table:
                # enough repeats for about a second of timing at each size (medians, not one-offs)
                once = time_call(lambda: table[name]["encode_one"]([doc]), 1)[0]
                reps = max(3, min(2000, int(1.0 / max(once, 1e-6))))
                row("encode_length", name, f"doc-{size}", len(doc.encode("utf-8")), time_call(lambda: table[name]["encode_one"]([doc]), reps))

    # Memory: resident set before and after a million encode calls of varied short texts.
    if "codellama-fast" in table and args.memory_calls:
        ours = prov.ours
        lines = [ln for t in corpora["python-stdlib"] for ln in t.splitlines() if ln.strip()]
        def rss() -> int:
            return int([ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmRSS")][0]) * 1024
        for ln in lines[:20000]:
            ours.encode(ln)
        before = rss()
        t0 = time.perf_counter()
        for k in range(args.memory_calls):
            ours.encode(lines[k % len(lines)] + (str(k) if k % 3 == 0 else ""))
        secs = time.perf_counter() - t0
        after = rss()
        rows.append({"bench": "memory", "provider": "codellama-fast", "metric": "rss_growth", "unit": "bytes", "p50": after - before,
                     "calls": args.memory_calls, "rss_before": before, "rss_after": after, "seconds": secs,
                     "git_sha": meta["git_sha"], "timestamp": meta["timestamp"]})
        print(f"memory: {args.memory_calls} encode calls, RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB ({secs:.1f} s)", flush=True)

    by = {(r["bench"], r["provider"], r["shape"]): r["p50"] for r in rows if r.get("unit") == "MB/s"}
    for (bench, prov, shape), v in list(by.items()):
        if prov != "codellama-fast":
            continue
        for base in ("sentencepiece", "tokenizers", "transformers"):
            if (bench, base, shape) in by:
                rows.append({"bench": bench, "provider": "ratio", "metric": f"ours_over_{base}", "unit": "x", "shape": shape,
                             "p50": v / by[(bench, base, shape)]})
    path = write_results("tokenizer", meta, rows, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
