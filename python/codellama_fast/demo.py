"""The main job's generation half: greedy generation from BOS with the bundled demo model."""

from __future__ import annotations

import sys


def run_generation_demo(max_new_tokens: int = 200) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print("generation demo skipped: install the engine extra (pip install 'codellama-fast[engine]')")
        return 0
    from .data import DEMO_MODEL_DIR
    from .engine import Engine

    engine = Engine.from_pretrained(DEMO_MODEL_DIR, device="cpu")
    engine.generate("", max_new_tokens=8)  # warm-up
    result = engine.generate("", max_new_tokens=max_new_tokens)
    print(f"\nmodel: bundled demo {DEMO_MODEL_DIR.name} ({engine.model.config.num_parameters() / 1e3:.0f}K parameters, "
          f"ops: {engine.model.ops.name}, device: {engine.device}); greedy from BOS:")
    print(result.text)
    print(f"generation speed: {result.decode_tokens_per_s:.0f} tokens/s decode, time to first token "
          f"{result.time_to_first_token_s * 1e3:.1f} ms ({len(result.token_ids[0])} tokens, stopped by {result.finish_reasons[0]})", flush=True)
    print("real use: codellama-fast generate --model /path/to/CodeLlama-7b-hf \"def fibonacci(n):\"  (or --model "
          "codellama/CodeLlama-7b-hf, once fetched with `hf download`)", file=sys.stderr)
    return 0
