"""Graph-captured decode: one CUDA graph replay runs a whole decode step (embedding, every layer,
LM head, greedy choice, the note of non-finite logits (engine.finite), and the advance of
positions/slots), with no per-token Python or launch overhead and no host synchronisation. The
host reads the generated ids (and the note) only every few steps.

All inputs live in static device buffers that the graph updates in place:
  tok [B, 1] next input ids, pos [B, 1] rotary positions, slot [1] cache slot, kv_len [1], and,
  for a step built for runs of rows that share their prompt (samples of a prompt), prompt_slots
  [1]: the slots the runs share (the first decode slot of the call), read once per run.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch

from .finite import FiniteWatch
from .model import LlamaModel, StepContext

Forward = Callable[[torch.Tensor, StepContext, list], torch.Tensor]


class GraphDecoder:
    def __init__(self, model: LlamaModel, caches: list[tuple[torch.Tensor, torch.Tensor]], kv_start: torch.Tensor,
                 max_steps: int, greedy: bool, forward: Forward | None = None, name: str = "plain",
                 capture: bool | None = None, shared_runs: int = 1) -> None:
        # `forward(tokens, ctx, caches) -> logits` is the step to capture: the model itself, or an
        # equivalent written for fewer launches (engine.fused_decode).
        # Off CUDA (or with capture=False) the same static-buffer step runs eagerly on replay():
        # the step logic can be tested anywhere (e.g. the Triton interpreter on CPU).
        on_cuda = model.embed.weight.device.type == "cuda"
        self.captured = on_cuda if capture is None else (capture and on_cuda)
        self.model, self.caches, self.greedy = model, caches, greedy
        self.forward: Forward = forward or model
        self.name = name
        dev = model.embed.weight.device
        b = kv_start.shape[0]
        self.tok = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(b, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.kv_len = torch.zeros(1, dtype=torch.int32, device=dev)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)
        # rows in runs of `shared_runs` share slots < prompt_slots (1: no sharing); the ops' decode
        # attention may read those once per run (Ops.attention's shared_prompt)
        self.shared_runs = shared_runs
        self.prompt_slots = torch.zeros(1, dtype=torch.int32, device=dev)
        self.out = torch.zeros(b, max_steps, dtype=torch.long, device=dev)  # ids written by the graph
        self.kv_start = kv_start
        # steps that fit from slot 0: the cache's slots and the output buffer's columns
        self.capacity = min(max_steps, caches[0][0].shape[2]) if caches else max_steps
        self.logits: torch.Tensor | None = None
        self.watch = FiniteWatch(dev)  # set by any step whose logits hold NaN/inf (engine.finite)
        self.graph = torch.cuda.CUDAGraph() if self.captured else None
        if self.captured:
            self._capture()

    def _body(self) -> None:
        # Uncaptured, each step hands the ops a new positions tensor: ops may keep per-step work
        # by the tensor's identity (TorchOps' RoPE angles), which the in-place advance below would
        # leave stale. A captured step replays its kernels on the buffer itself.
        pos = self.pos if self.captured else self.pos.clone()
        shared = (self.shared_runs, self.prompt_slots) if self.shared_runs > 1 else None
        ctx = StepContext(pos, self.slot, self.slot, self.kv_start, self.kv_len, shared_prompt=shared)
        logits = self.forward(self.tok, ctx, self.caches)  # [B, V] fp32
        if self.captured or self.logits is None:
            self.logits = logits
        else:  # uncaptured, each step still leaves its logits in one buffer, as a replay does
            self.logits.copy_(logits)
        self.watch.see(self.logits)
        if self.greedy:
            nxt = self.logits.argmax(dim=-1, keepdim=True)
            self.tok.copy_(nxt)
            self.out.index_copy_(1, self.step, nxt)
        self.pos.add_(1)
        self.slot.add_(1)
        self.kv_len.add_(1)
        self.step.add_(1)

    def _capture(self) -> None:
        # Warm up on a side stream (compiles the Triton kernels, sets up cuBLAS), then capture.
        saved = [t.clone() for t in (self.tok, self.pos, self.slot, self.kv_len, self.step)]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):
                self._body()
        torch.cuda.current_stream().wait_stream(stream)
        for t, s in zip((self.tok, self.pos, self.slot, self.kv_len, self.step), saved):
            t.copy_(s)
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self._body()

    def start(self, first_tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> None:
        """first_tokens/positions [B]: the token sampled after prefill and its rotary position;
        `slot`: the first decode slot (the prompt's slots are those before it)."""
        self.tok.copy_(first_tokens[:, None])
        self.pos.copy_(positions[:, None])
        self.slot.fill_(slot)
        self.prompt_slots.fill_(slot)
        self.kv_len.fill_(slot + 1)
        self.step.zero_()
        self.watch.reset()

    def restart(self) -> None:
        """The state of a first step at slot 0 (token 0): for trial replays before real use."""
        self.start(torch.zeros_like(self.tok[:, 0]), torch.zeros_like(self.pos[:, 0]), 0)

    def replay(self) -> torch.Tensor:
        """Runs one step; returns the step's logits buffer [B, V] (valid until the next replay)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.inference_mode():
                self._body()
        assert self.logits is not None
        return self.logits


def time_replays(dec: GraphDecoder, replays: int = 12) -> float:
    """Milliseconds per step over consecutive replays from slot 0 (best of three runs). Each replay
    advances the slot, so a run stays within the cache and the output buffer. Off CUDA (eager
    steps, e.g. in the interpreter) the time means little: one short run."""
    on_cuda = dec.tok.device.type == "cuda"
    steps = max(1, min(replays if on_cuda else 2, dec.capacity - 1))
    timings = []
    for _ in range(3 if on_cuda else 1):
        dec.restart()
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                dec.replay()
            end.record()
            end.synchronize()
            timings.append(start.elapsed_time(end) / steps)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                dec.replay()
            timings.append((time.perf_counter() - t0) * 1e3 / steps)
    return min(timings)


def pick_faster(decoders: list[GraphDecoder], rel_tol: float = 2e-2,
                timer: Callable[[GraphDecoder], float] = time_replays) -> GraphDecoder:
    """Of decoders of the same model, cache and shape, the one whose step runs fastest (`timer`).
    Each first runs one step from the same state and must give the first one's logits (within
    `rel_tol` of their largest magnitude): a step that disagrees or fails is never chosen. Replays rewrite
    the same cache slot with the same values, and every decoder's state is reset by ``start``."""
    ref: torch.Tensor | None = None
    best, best_t = decoders[0], float("inf")
    for dec in decoders:
        dec.restart()
        try:
            logits = dec.replay().clone()
        except Exception as exc:  # noqa: BLE001  (a candidate that cannot run is not chosen; the first must run)
            if ref is None:
                raise
            warnings.warn(f"the {dec.name} decode step failed, not using it: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        if ref is None:
            ref = logits
        elif not bool(torch.isfinite(logits).all()) or (logits - ref).abs().max().item() > rel_tol * max(1.0, ref.abs().max().item()):
            continue
        t = timer(dec)
        if t < best_t:
            best, best_t = dec, t
    return best
