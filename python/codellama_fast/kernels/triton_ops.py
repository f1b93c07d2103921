"""The engine's ``Ops`` implemented with the Triton kernels of this package."""

from __future__ import annotations

import torch

from . import gemv, reference
from .attention_decode import attention_decode, new_counters, rope_attention_decode
from .attention_prefill import attention_prefill
from .attention_shared_decode import attention_shared_decode, saves_enough
from .decode_tuning import DecodeLaunches
from .rmsnorm import rms_norm
from .rope import rope_cache_update
from .swiglu import swiglu

# Head sizes the attention/RoPE kernels take (tl.dot needs >= 16, tl.arange powers of two).
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


class TritonOps:
    """Kernels where they apply; the torch reference for head sizes they do not take."""

    name = "triton"
    # batches up to this size get the one-launch fused projections (engine.fused_decode)
    fused_max_rows = gemv.MAX_ROWS

    def __init__(self) -> None:
        # Split counters of the one-launch decode attention, per device. Every launch leaves them
        # zeroed, and one model's layers run one after another, so all layers and steps share them.
        # A larger batch gets a new buffer; old ones are kept, since captured graphs point at them.
        self._counters: dict[torch.device, torch.Tensor] = {}
        self._retired: list[torch.Tensor] = []
        # the decode attention's launch per shape, where tune_decode_attention timed one
        self.decode_launches = DecodeLaunches()
        # Programmatic dependent launch for the decode step's attention and one-row projections
        # (sm_90+; elsewhere no effect): each may start while the kernel before it finishes, the
        # projections reading their first weight tile meanwhile. Same bits. Off until GPU runs
        # (bench_kernels' layer section) show it faster.
        self.pdl = False

    def _decode_counters(self, n: int, device: torch.device) -> torch.Tensor:
        buf = self._counters.get(device)
        if buf is None or buf.numel() < n:
            if buf is not None:
                self._retired.append(buf)
            buf = self._counters[device] = new_counters(max(n, 256), device)
        return buf

    def tune_decode_attention(self, q_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int):
        """Times the decode attention's launches over this cache at `kv_len` keys and makes the
        fastest the one its shape uses from now on (kernels.decode_tuning); returns it, or None
        where nothing was timed. Every launch gives the same bits."""
        if k_cache.shape[-1] not in SUPPORTED_HEAD_DIMS:
            return None
        counters = self._decode_counters(k_cache.shape[0] * k_cache.shape[1], k_cache.device)
        return self.decode_launches.tune(q_heads, k_cache, v_cache, kv_len, counters)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
        return rms_norm(x, weight, eps, residual)

    def rope_cache_update(self, q, k, v, positions, inv_freq, k_cache, v_cache, slots):
        if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
            return reference.rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots)
        return rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots)

    def shared_decode_runs(self, batch: int, runs: int, prompt_slots: int, kv_heads: int, head_dim: int,
                           element_size: int) -> int:
        """`runs` where a decode step of `batch` rows in runs of `runs` sharing `prompt_slots` slots
        reads them once per run (attention_shared_decode: enough saved for its extra launches),
        else 1: what a captured decode step for such a call is built for."""
        shares = (runs > 1 and head_dim in SUPPORTED_HEAD_DIMS
                  and saves_enough(batch, runs, prompt_slots, kv_heads, head_dim, element_size))
        return runs if shares else 1

    def decode_reads_prompt_once(self, batch, runs, prompt_slots, kv_heads, head_dim, dtype, device):
        """Whether every uncaptured decode step of such rows reads the prompt's slots once per run
        (``_reads_prompt_once`` with an int number of slots)."""
        return self.shared_decode_runs(batch, runs, prompt_slots, kv_heads, head_dim, torch.empty((), dtype=dtype).element_size()) > 1

    def _reads_prompt_once(self, q: torch.Tensor, k_cache: torch.Tensor, shared_prompt) -> bool:
        """A decode step over runs of rows sharing their prompt's slots, worth reading them once. A
        captured step passes the slots as a device tensor: its engine chose the path for the call
        (shared_decode_runs)."""
        if shared_prompt is None or q.shape[1] != 1 or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
            return False
        runs, slots = shared_prompt
        if isinstance(slots, torch.Tensor):
            return runs > 1
        b, hkv, _, d = k_cache.shape
        return self.shared_decode_runs(b, runs, int(slots), hkv, d, k_cache.element_size()) > 1

    def attention(self, q, k_cache, v_cache, q_start, kv_start, kv_len, shared_prompt=None):
        if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
            return reference.attention(q, k_cache, v_cache, q_start, kv_start, kv_len)
        if self._reads_prompt_once(q, k_cache, shared_prompt):  # samples' or beams' prompt slots read once per run
            return attention_shared_decode(q, k_cache, v_cache, kv_start, kv_len, *shared_prompt)
        if q.shape[1] == 1:
            merge, stages = self.decode_launches.current(q.shape[2], k_cache) or (None, None)
            return attention_decode(q, k_cache, v_cache, kv_start, kv_len, merge=merge, stages=stages)
        return attention_prefill(q, k_cache, v_cache, int(q_start), kv_start, int(kv_len))

    def rope_attention(self, q, k, v, positions, inv_freq, k_cache, v_cache, slots, q_start, kv_start, kv_len, shared_prompt=None):
        # One new token per sequence (its slot is kv_len - 1): RoPE, cache write and attention in one
        # launch, unless the rows share a prompt read once (RoPE and the cache write first, then that).
        once = self._reads_prompt_once(q, k_cache, shared_prompt)
        if q.shape[1] == 1 and q.shape[-1] in SUPPORTED_HEAD_DIMS and not once:
            counters = self._decode_counters(q.shape[0] * k_cache.shape[1], q.device)
            merge, stages = self.decode_launches.current(q.shape[2], k_cache) or (None, None)
            return rope_attention_decode(q, k, v, positions, inv_freq, k_cache, v_cache, slots, kv_start, kv_len,
                                         counters=counters, merge=merge, stages=stages, pdl=self.pdl)
        q_rot = self.rope_cache_update(q, k, v, positions, inv_freq, k_cache, v_cache, slots)
        if once:
            return attention_shared_decode(q_rot, k_cache, v_cache, kv_start, kv_len, *shared_prompt)
        return self.attention(q_rot, k_cache, v_cache, q_start, kv_start, kv_len)

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        return swiglu(gate_up)

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, w)  # cuBLAS (the interpreter's CPU tensors: the same call)

    # Up to gemv.MAX_ROWS rows (the decode step of a small batch): one launch each, the norm /
    # SwiGLU / residual add fused around the weight read. More rows: the composed ops (cuBLAS).
    def norm_linear(self, x, norm_w, w, eps):
        if x.shape[0] <= gemv.MAX_ROWS:
            return gemv.norm_linear(x, norm_w, w, eps, pdl=self.pdl)
        return torch.nn.functional.linear(self.rms_norm(x, norm_w, eps), w)

    def norm_linear_swiglu(self, x, norm_w, w13, eps):
        if x.shape[0] <= gemv.MAX_ROWS:
            return gemv.norm_linear_swiglu(x, norm_w, w13, eps, pdl=self.pdl)
        return self.swiglu(torch.nn.functional.linear(self.rms_norm(x, norm_w, eps), w13))

    def linear_residual(self, x, w, residual):
        if x.shape[0] <= gemv.MAX_ROWS:
            return gemv.linear_residual(x, w, residual, pdl=self.pdl)
        return residual + torch.nn.functional.linear(x, w)
