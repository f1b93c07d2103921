"""A process's first generation from nothing, as a command-line call pays it: each sample is a fresh
Python process that imports the library, loads the bundled demo model (stories260K) and generates
``--tokens`` greedy tokens, ours against transformers (``LlamaForCausalLM.from_pretrained`` on the
same folder, the same prompt ids). Measured per process, wall clock: the whole process (from its
start to its exit), and inside it the import, the load and the generation.

    python benches/bench_startup.py [--repeats 5] [--tokens 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import git_sha, machine, now, percentiles, versions, write_results  # noqa: E402

# Each child prints {"import_s", "load_s", "generate_s", "tokens"} as JSON on its last line.
CHILD = {
    "codellama-fast": """
import json, sys, time
t0 = time.perf_counter()
from codellama_fast import Engine
from codellama_fast.data import DEMO_MODEL_DIR
t1 = time.perf_counter()
engine = Engine.from_pretrained(DEMO_MODEL_DIR)
t2 = time.perf_counter()
out = engine.generate(input_ids=[__IDS__], max_new_tokens=__N__, stop_at_eos=False)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2, "tokens": out.token_ids[0]}))
""",
    "transformers": """
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import LlamaForCausalLM
from codellama_fast.data import DEMO_MODEL_DIR
t1 = time.perf_counter()
model = LlamaForCausalLM.from_pretrained(DEMO_MODEL_DIR).eval()
t2 = time.perf_counter()
x = torch.tensor([__IDS__])
out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=__N__, min_new_tokens=__N__, do_sample=False, pad_token_id=0)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2, "tokens": out[0, x.shape[1]:].tolist()}))
""",
}


def run_once(provider: str, ids: list[int], tokens: int) -> dict:
    code = CHILD[provider].replace("__IDS__", repr(ids)).replace("__N__", str(tokens))
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{provider} failed: {res.stderr[-2000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]), process_s=wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from codellama_fast.data import DEMO_MODEL_DIR

    ids = _prompt_ids(DEMO_MODEL_DIR)
    samples: dict[str, list[dict]] = {p: [] for p in CHILD}
    for _ in range(args.repeats):  # the providers in turns, so the machine's drift hits both
        for provider in CHILD:
            samples[provider].append(run_once(provider, ids, args.tokens))
    ours, theirs = samples["codellama-fast"], samples["transformers"]
    same = all(a["tokens"] == b["tokens"] for a, b in zip(ours, theirs))
    meta = dict(machine=machine(), versions=versions("torch", "transformers"), git_sha=git_sha(), timestamp=now(),
                model="stories260K (bundled demo)", tokens=args.tokens, repeats=args.repeats, same_tokens=same)
    rows = []
    for provider, runs in samples.items():
        for phase in ("process_s", "import_s", "load_s", "generate_s"):
            p = percentiles([r[phase] for r in runs])
            rows.append(dict(bench="startup", provider=provider, metric=phase, unit="s", shape=f"demo T{args.tokens}",
                             p20=p["p20"], p50=p["p50"], p80=p["p80"], samples=[r[phase] for r in runs]))
    path = write_results("startup-cpu", meta, rows, args.out)
    for r in rows:
        print(f"{r['provider']:15s} {r['metric']:11s} p50 {r['p50']:.3f} s (p20 {r['p20']:.3f}, p80 {r['p80']:.3f})")
    print(f"same tokens: {same}; wrote {path}")


def _prompt_ids(folder: Path) -> list[int]:
    """The prompt in the demo model's own tokenizer."""
    from codellama_fast import Engine

    return Engine.from_pretrained(folder).tokenizer.encode("Once upon a time")


if __name__ == "__main__":
    main()
