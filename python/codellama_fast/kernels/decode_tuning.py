"""The decode attention's launch for a shape, chosen by timing it on the GPU it runs on.

``rope_attention_decode`` merges its splits one of two ways and software-pipelines its key loop
to a depth (``attention_decode.launch_defaults`` gives a fixed choice from H200 runs). Which one
is fastest depends on the GPU, the batch, the heads and the cache length, so ``DecodeLaunches``
times every pairing at a decode state's shape and keeps the fastest for the launches that follow
(the engine does it before it captures a state's decode step). None of the pairings changes the
arithmetic: the splits, the order in which keys and splits are summed and the rounding are the
same in all of them, so a pick never changes a token.

The timing replays a CUDA graph of the kernel alone (GPU time, no host launch cost, as the
captured decode step runs it) over the state's own cache, so it needs no memory beyond a few
query-sized tensors. The candidate writes its new key and value into the cache's last slot, which
no call reads before a real step has written it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from functools import partial
from typing import Callable

import torch

from .attention_decode import launch_defaults, rope_attention_decode

# (merge, pipeline stages of the key loop)
Launch = tuple[str, int]
CANDIDATES: tuple[Launch, ...] = (("last", 2), ("last", 3), ("kernel", 2), ("kernel", 3))
# (device, query heads per KV head, sequences × KV heads, head dim, dtype)
ShapeKey = tuple[torch.device, int, int, int, torch.dtype]
# A candidate must beat the default by this fraction to replace it: a pick that does not move
# the time keeps the launch that the committed runs measured.
MARGIN = 0.02
Timer = Callable[[Callable[[], object]], float]


def graph_time_ms(fn: Callable[[], object], launches: int = 8, repeats: int = 3) -> float:
    """GPU milliseconds per call of `fn`: replays of a CUDA graph that calls it `launches` times,
    best of `repeats`. `fn` runs once first on a side stream (Triton compiles there)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    graph.replay()
    best = math.inf
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / launches)
    return best


def shape_key(q_heads: int, k_cache: torch.Tensor) -> ShapeKey:
    b, hkv, _, d = k_cache.shape
    return (k_cache.device, q_heads // hkv, b * hkv, d, k_cache.dtype)


def length_class(kv_len: int) -> int:
    """Cache lengths whose picks are kept apart: one class per factor of 4 (…, 1k-4k, 4k-16k, …)."""
    return max(0, int(kv_len).bit_length() - 1) // 2


def label(launch: Launch) -> str:
    return f"{launch[0]}_s{launch[1]}"


class DecodeLaunches:
    """The launch each decode shape uses now, and the timings that chose it.

    ``tune`` times the candidates for a shape and a cache length (once per length class) and
    makes the fastest the shape's current launch; ``current`` is what a launch of that shape takes
    (None: the kernel's defaults). `timer(fn) -> ms` is ``graph_time_ms`` by default, which needs
    CUDA; elsewhere ``tune`` with the default timer changes nothing."""

    def __init__(self, timer: Timer | None = None) -> None:
        self._timer = timer
        self._current: dict[ShapeKey, Launch] = {}
        # (shape, length class) -> (the pick, ms per candidate label)
        self._tuned: dict[tuple[ShapeKey, int], tuple[Launch, dict[str, float]]] = {}
        self._lock = threading.Lock()

    def current(self, q_heads: int, k_cache: torch.Tensor) -> Launch | None:
        # every decode launch asks: no lock (a dict read is atomic), nothing to build when untuned
        if not self._current:
            return None
        return self._current.get(shape_key(q_heads, k_cache))

    def tune(self, q_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
             counters: torch.Tensor | None) -> Launch | None:
        """Makes the fastest candidate at this shape and `kv_len` keys the shape's launch (timed
        once per length class) and returns it; None where nothing can be timed (no CUDA with the
        default timer)."""
        timer = self._timer
        if timer is None:
            if k_cache.device.type != "cuda":
                return None
            timer = graph_time_ms
        b, hkv, capacity, _ = k_cache.shape
        if not 1 <= kv_len <= capacity:
            raise ValueError(f"kv_len must be within the cache's {capacity} slots, got {kv_len}")
        key = shape_key(q_heads, k_cache)
        where = (key, length_class(kv_len))
        known = self._tuned.get(where)
        if known is None:
            # on the cache's GPU (streams and graphs are made on the current device)
            with torch.cuda.device(k_cache.device) if k_cache.device.type == "cuda" else contextlib.nullcontext():
                times = self._time_candidates(timer, q_heads, k_cache, v_cache, kv_len, counters)
            known = (pick(times, launch_defaults(q_heads // hkv, b * hkv)), {label(c): t for c, t in times.items()})
        with self._lock:
            self._tuned.setdefault(where, known)
            self._current[key] = known[0]
        return known[0]

    def report(self) -> list[dict]:
        """One entry per tuned (shape, length class): the shape, the pick and each candidate's
        time (ms per launch), for benchmark records."""
        with self._lock:
            entries = list(self._tuned.items())
        return [{"group": key[1], "batch_kv_heads": key[2], "head_dim": key[3], "dtype": str(key[4]),
                 "kv_len_from": 4**cls, "kv_len_below": 4 ** (cls + 1), "picked": label(picked), "ms_per_launch": times}
                for (key, cls), (picked, times) in entries]

    @staticmethod
    def _time_candidates(timer: Timer, q_heads: int, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
                         counters: torch.Tensor | None) -> dict[Launch, float]:
        b, hkv, _, d = k_cache.shape
        dev, dt = k_cache.device, k_cache.dtype
        # one decode step's inputs at the last of kv_len slots (scaled so the softmax stays finite)
        q = torch.randn(b, 1, q_heads, d, dtype=dt, device=dev) * d**-0.5
        k = torch.randn(b, 1, hkv, d, dtype=dt, device=dev) * d**-0.5
        v = torch.randn(b, 1, hkv, d, dtype=dt, device=dev)
        positions = torch.full((b, 1), kv_len - 1, dtype=torch.long, device=dev)
        inv_freq = torch.full((d // 2,), 1e-4, device=dev)  # any angles: only the time is wanted
        slots = torch.full((1,), kv_len - 1, dtype=torch.long, device=dev)
        kv_start = torch.zeros(b, dtype=torch.long, device=dev)
        kv_len_t = torch.full((1,), kv_len, dtype=torch.int32, device=dev)
        times: dict[Launch, float] = {}
        for merge, stages in CANDIDATES:
            fn = partial(rope_attention_decode, q, k, v, positions, inv_freq, k_cache, v_cache, slots, kv_start, kv_len_t,
                         counters=counters, merge=merge, stages=stages)
            try:
                t = float(timer(fn))
            except Exception as exc:  # noqa: BLE001  (a launch this GPU cannot build or capture is not chosen)
                warnings.warn(f"decode attention launch {label((merge, stages))} failed, not using it: "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
                continue
            if math.isfinite(t) and t > 0:
                times[(merge, stages)] = t
        return times


def pick(times: dict[Launch, float], default: Launch) -> Launch:
    """The fastest timed launch, or the default where it is within MARGIN of the fastest (or where
    nothing was timed)."""
    if not times:
        return default
    best = min(times, key=times.__getitem__)
    if default in times and times[default] <= times[best] * (1 + MARGIN):
        return default
    return best
