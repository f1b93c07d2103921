"""Charts from benchmark JSON: `python benches/plot.py benches/results/e2e-*.json` writes a PNG beside each."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_e2e(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(path).read_text())
    rows = [r for r in data["rows"] if r.get("metric") == "decode_tokens_per_s"]
    shapes = sorted({r["shape"] for r in rows}, key=lambda s: [int(x[1:]) if x[1:].isdigit() else x for x in s.split()])
    providers = [p for p in ("codellama-fast", "transformers-static-compile", "transformers-eager") if any(r["provider"] == p for r in rows)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, len(shapes) * 0.8), 8), constrained_layout=True)
    width = 0.8 / max(1, len(providers))
    for k, prov in enumerate(providers):
        vals = [next((r["p50"] for r in rows if r["shape"] == s and r["provider"] == prov), 0) for s in shapes]
        ax1.bar([i + k * width for i in range(len(shapes))], vals, width, label=prov)
    ax1.set_xticks([i + width * (len(providers) - 1) / 2 for i in range(len(shapes))], shapes, rotation=45, ha="right")
    ax1.set_ylabel("decode tokens/s (all sequences)")
    ax1.set_yscale("log")
    ax1.legend()
    gpu = data["meta"].get("machine", {}).get("gpu", "cpu")
    ax1.set_title(f"decode speed, {gpu}, {data['meta'].get('dtype')}")
    ours = [r for r in rows if r["provider"] == "codellama-fast"]
    ax2.bar(range(len(ours)), [100 * (r.get("fraction_of_copy_bw") or 0) for r in ours])
    ax2.set_xticks(range(len(ours)), [r["shape"] for r in ours], rotation=45, ha="right")
    ax2.set_ylabel("% of measured copy bandwidth")
    ax2.axhline(80, color="gray", linestyle="--", linewidth=1)
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(plot_e2e(Path(arg)))
