"""The captured decode states an Engine keeps between calls. A state is a KV cache plus the decode
step captured over it (engine.cuda_graph) for one batch size and decode mode (the step takes the
argmax itself, or not). It serves every later call whose prompt and new tokens fit in its cache,
whatever their lengths: the captured step reads positions, slots and the cache length from device
buffers, so only the cache's size is fixed at capture. Building one costs a cache allocation, a
few warm-up steps and the capture (with decode_step="auto", of two candidate steps, then timing
them), so a chat whose prompts differ in length at every call would otherwise pay it every call,
before its first token.

Capacities come in coarse buckets (`cache_capacity`): prompts that grow (a chat's history)
rebuild the state only now and then, for at most a quarter more memory than the call needs, and
only where that much is free; else the state is sized to the call, or, where even that does not
fit, holds as many slots as fit (a "short" state: the generation ends at its end). Later calls
that would not fit either reuse a short state rather than build the same again.

A state serves calls of its own batch size, and of its own runs of rows that share their prompt
(engine.shared_prompts; 1 where the ops' decode attention reads every row's copy at that size): a
step built to read a prompt once per run of n rows is another step. A step over more rows
multiplies the weights by a matrix of another shape, whose products the GPU may sum in another
order: a call replayed on a state of more rows could round differently from the same call alone,
and greedy tokens would depend on what ran before. Together with decode attention that sums the
keys in an order set by the batch alone (never by the cache's size), this makes a call's tokens
the same whichever state, or cache of its own, serves it. Beam search runs its steps on a state
of prompts x beams rows too (the beams regrouped in its cache in place).

The engine keeps states of several shapes (a batch size, a decode mode, runs of rows), so that
calls that alternate between them (greedy and sampled calls, one sequence and a few samples of it)
capture each shape once rather than at every switch: at most the engine's `max_decode_states`
(`MAX_STATES` by default), and only while the memory left after a new state is at least as large
as that state. Past either, the states used least recently go first (all of them where memory is
short, as they must for a long call). A state of the same shape too small for the call goes at
once: the new one serves its calls.

A state serves one generation at a time (a lease): a generation that overlaps one using it
(interleaved streams, a generate while a stream is open, another thread's call) gets none and runs
uncaptured on a cache of its own, rather than overwriting the first one's cache.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from ..errors import OutOfMemoryError
from .cache import KVCache
from .cuda_graph import GraphDecoder
from .prompt_cache import copy_slots, reusable_slots

MIN_BUCKET = 256  # cache slots: the finest capacity step

# The most states kept at once by default. Each holds a cache sized to its calls plus its captured step's
# buffers; a handful covers an application's kinds of call (greedy, sampled, samples, beams).
MAX_STATES = 4


def cache_capacity(needed: int) -> int:
    """Cache slots for a state that must hold `needed` tokens (prompt + new tokens): `needed`
    rounded up to a multiple of max(256, 2^(k-2)) for 2^k <= needed < 2^(k+1), so at most a
    quarter more than asked (256 slots more for short calls), and a few sizes per doubling."""
    if needed < 1:
        raise ValueError(f"a decode state holds at least one token, not {needed}")
    step = max(MIN_BUCKET, 1 << max(0, needed.bit_length() - 3))
    return -(-needed // step) * step


@dataclass
class DecodeState:
    batch: int
    greedy: bool
    cache: KVCache
    kv_start: torch.Tensor  # [batch] int64: padding slots per row, set by each generation
    decoder: GraphDecoder
    short: bool = False  # holds fewer slots than the call that built it asked: as many as fitted
    # the tokens whose keys and values the cache's slots 0..len(ids)-1 hold, set by the one-sequence
    # generation that used it last ([]: none known); each lease starts by taking it away
    ids: list[int] = field(default_factory=list)
    runs: int = 1  # rows come in runs of this many sharing their prompt's slots, read once per run (1: none)

    @property
    def capacity(self) -> int:
        return self.cache.max_len


# (batch, capacity, greedy, least, runs) -> a new state: the cache and the chosen decode step over
# it; with `least`, a cache of fewer slots (as many as fit, at least `least`) rather than none
Builder = Callable[[int, int, bool, "int | None", int], DecodeState]


class DecodeStates:
    """The states an Engine keeps (several shapes while memory allows) and their leases."""

    def __init__(self, spare_slots: Callable[[int], int], free_other: Callable[[], None] | None = None) -> None:
        # cache slots for a batch of this many sequences that the free memory holds now
        self._spare_slots = spare_slots
        # frees the memory other kept caches hold (the engine's kept prompts), which go before any
        # state does where a new state lacks room: a kept prompt saves a prefill, a state a capture
        self._free_other = free_other
        self._states: list[DecodeState] = []  # least recently leased first
        self._leased: set[int] = set()  # id() of the states a generation is using now
        # bookkeeping only, never held while a state is built; reentrant: a dropped stream's clean-up
        # (its lease's release) may run from the garbage collector inside this bookkeeping
        self._lock = threading.RLock()
        self.builds = 0  # states built so far (each a cache allocation and a capture)

    def clear(self) -> None:
        """Forgets every state: the next call builds (captures) anew. A generation using one keeps it
        until it ends."""
        with self._lock:
            self._states.clear()

    def __len__(self) -> int:
        return len(self._states)

    @contextmanager
    def lease(self, batch: int, needed: int, greedy: bool, build: Builder,
              least: int | None = None, runs: int = 1, keep: int = MAX_STATES) -> Iterator[DecodeState | None]:
        """A state for one generation of `batch` sequences holding up to `needed` tokens, held until
        the block ends: the smallest free one of `batch` rows that fits, else a new one
        (`build`), or None when every one that fits is in use (the caller then runs uncaptured on
        a cache of its own). With `least`, a short state of at least `least` slots will do where
        `needed` does not fit in memory (the caller ends its generation at the state's end). `runs`:
        the runs of rows sharing their prompt that the state's step reads once per run (1: none).
        `keep`: the most states kept, the new one included."""
        state: DecodeState | None = None

        def serves(s: DecodeState) -> bool:
            return s.batch == batch and s.greedy == greedy and s.runs == runs

        with self._lock:
            fitting = [s for s in self._states if serves(s) and s.capacity >= needed]
            if not fitting and least is not None:
                # a short state built for an earlier call that did not fit either, where a state
                # built anew (this one's memory freed first) could not hold `needed` either
                fitting = [s for s in self._states if serves(s) and s.short and s.capacity >= least
                           and s.capacity + self._spare_slots(batch) < needed]
            free = [s for s in fitting if id(s) not in self._leased]
            if free:
                state = min(free, key=lambda s: s.capacity)
                self._leased.add(id(state))
                self._states.remove(state)
                self._states.append(state)  # the most recently leased last
            elif not fitting:
                # make room before allocating: generations using a dropped state keep it until they end
                self._states = [s for s in self._states if not serves(s)]  # too small: the new one serves their calls
                self._make_room(batch, cache_capacity(needed), keep)
        if state is None and fitting:
            yield None
            return
        if state is None:
            state = self._build(batch, needed, greedy, build, least, runs)
            with self._lock:
                self._states.append(state)
                self._leased.add(id(state))
        try:
            yield state
        finally:
            with self._lock:
                self._leased.discard(id(state))

    def copy_prompt(self, prompt: Sequence[int], cache: KVCache, more_than: int = 0) -> int:
        """Copies into row 0 of `cache` the slots of `prompt`'s leading tokens that a kept state of
        one sequence holds (``DecodeState.ids``), where one free now gives more than `more_than`
        (``reusable_slots``); returns how many it copied (0: none). For a call on a state of another
        shape: the samples of a chat's next turn, or its next turn in another decode mode. The
        state copied from is leased meanwhile and keeps what it holds."""
        with self._lock:
            kept = [(reusable_slots(s.ids, prompt), s) for s in self._states if s.batch == 1 and id(s) not in self._leased]
            n, donor = max(kept, key=lambda k: k[0], default=(0, None))
            if donor is None or n <= more_than:
                return 0
            self._leased.add(id(donor))
        try:
            copy_slots(donor.cache, cache, n)
        finally:
            with self._lock:
                self._leased.discard(id(donor))
        return n

    def _make_room(self, batch: int, capacity: int, keep: int) -> None:
        """Where the free memory does not hold twice a cache of `capacity` slots for `batch`
        sequences (the new state's, and as much again left free after it), frees the other kept
        caches (``free_other``); then drops the states used least recently until one more fits
        under `keep` and the memory holds that: all of them where it does not. A dropped state's
        memory is free once no generation holds it."""
        if self._free_other is not None and self._spare_slots(batch) < 2 * capacity:
            self._free_other()
        while self._states and (len(self._states) >= keep or self._spare_slots(batch) < 2 * capacity):
            self._states.pop(0)

    def _build(self, batch: int, needed: int, greedy: bool, build: Builder, least: int | None, runs: int) -> DecodeState:
        capacity = cache_capacity(needed)
        state = None
        if capacity > needed:
            try:
                state = build(batch, capacity, greedy, None, runs)
            except OutOfMemoryError:
                pass  # the bucket does not fit: what the call needs, or as much of it as fits
        if state is None:
            state = build(batch, needed, greedy, least, runs)
            state.short = state.capacity < needed
        self.builds += 1
        return state
