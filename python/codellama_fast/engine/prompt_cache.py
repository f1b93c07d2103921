"""The KV caches of the engine's last single-sequence generations (and the prompts of its last
samples and beams), kept for the next one whose prompt begins with the same tokens: a chat's next
turn (the whole dialog again, with a new message at its end), a longer version of the same file, a
second completion of one prompt. That call takes the kept keys and values of the common tokens into
its own cache and prefills only the rest. A few are kept at once (the engine's
``max_kept_prompts``), so that calls alternating between conversations, or between an editor's
files, each find their own: the ones used least recently go first, and all but the newest go where
the memory left free is less than they hold together. A decode state's cache
(engine.decode_states) outlives its calls too: it notes the tokens its last call of one sequence
fed (``DecodeState.ids``), and ``reusable_slots`` says how many the next call takes.

A slot's key and value depend only on the tokens in the slots up to it (one sequence, no padding,
positions equal to slots), so the reused slots hold what a new prefill would compute, up to the
rounding of a prefill split in other chunks. The weights must be the ones the kept cache was made
with: ``Engine.release_cache`` drops them (as it drops the captured decode steps) after weights change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .cache import KVCache

# The fewest leading tokens a prompt must share with the kept ones to take them. A reused slot's
# key and value round as the earlier call's prefill computed them, so a call's last bits depend on
# the call before it; a few shared tokens (BOS alone, a common import line) save too little
# prefill to be worth that. A chat's dialog, a grown file or a repeated prompt shares far more.
MIN_SHARED_TOKENS = 32


@dataclass
class KeptPrompt:
    ids: list[int]  # the tokens whose keys and values fill the cache's slots 0..len(ids)-1, in order
    cache: KVCache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _begins_with(ids: Sequence[int], head: Sequence[int]) -> bool:
    return len(head) <= len(ids) and common_prefix(ids, head) == len(head)


def reusable_slots(held: Sequence[int], prompt: Sequence[int]) -> int:
    """How many of `prompt`'s leading tokens a cache holding the keys and values of `held` gives:
    the tokens they share, at most len(prompt) - 1 (the last is fed again for its logits); 0 under
    MIN_SHARED_TOKENS."""
    n = min(common_prefix(held, prompt), len(prompt) - 1)
    return n if n >= MIN_SHARED_TOKENS else 0


class FedTokens:
    """One call's record of the tokens whose keys and values its cache's slots 0..filled-1 hold
    (``ids``): the prompt, then each chosen token, counted as held once a step has fed it. The
    call moves ``filled`` as its steps run, so that however it ends (a stream closed early, an
    error) ``ids`` is exact. Records nothing where the call's cache is not reused (``tracking``)."""

    def __init__(self, prompt: Sequence[int], tracking: bool) -> None:
        self.tracking = tracking
        self.seq: list[int] = list(prompt) if tracking else []  # the prompt and the tokens chosen so far
        self.filled = 0  # leading tokens of `seq` whose keys and values are in the cache

    def chosen(self, tokens: Sequence[int]) -> None:
        """The call chose `tokens` (one sequence's, in order), to be fed by its next steps."""
        if self.tracking:
            self.seq += tokens

    @property
    def ids(self) -> list[int]:
        return self.seq[: self.filled]


# The most kept prompts by default (Engine.max_kept_prompts).
MAX_KEPT = 4


class PromptCache:
    """Holds up to `most` ``KeptPrompt`` (``keep``'s argument), least recently used first. A
    generation takes the one it continues (no other call can use it meanwhile: two open streams
    never share a cache) and hands its own cache back when it ends. `free_bytes()`: the memory the
    device has free now (None: no limit but the count)."""

    def __init__(self, free_bytes: Callable[[], int] | None = None) -> None:
        self._kept: list[KeptPrompt] = []
        self._free_bytes = free_bytes

    def _best(self, prompt: Sequence[int]) -> tuple[int, int]:
        """(index of the kept prompt giving the most of `prompt`, ``reusable_slots`` it gives);
        (-1, 0) where none gives any. Of equals, the most recent."""
        best, most = -1, 0
        for i, kept in enumerate(self._kept):
            n = reusable_slots(kept.ids, prompt)
            if n > 0 and n >= most:
                best, most = i, n
        return best, most

    def take(self, prompt: Sequence[int]) -> tuple[KeptPrompt | None, int]:
        """(the kept prompt giving the most of `prompt`, ``reusable_slots`` it gives), taken out of
        the cache; (None, 0) where none gives any (the others stay)."""
        i, n = self._best(prompt)
        return (self._kept.pop(i), n) if i >= 0 else (None, 0)

    def copy_into(self, prompt: Sequence[int], cache: KVCache, more_than: int = 0, drop: bool = False) -> int:
        """Copies into row 0 of `cache` the slots of `prompt`'s leading tokens that the kept prompt
        giving the most of it holds, where that is more than `more_than`; returns how many (0:
        none). That kept prompt then goes (`drop`: its tokens now live in `cache`), or becomes the
        most recent."""
        i, n = self._best(prompt)
        if i < 0 or n <= more_than:
            return 0
        kept = self._kept.pop(i)
        copy_slots(kept.cache, cache, n)
        if not drop:
            self._kept.append(kept)
        return n

    def extends(self, ids: Sequence[int]) -> bool:
        """Whether a kept prompt's tokens begin with all of `ids` (it gives any prompt at least what
        a cache of `ids` would); that one becomes the most recent."""
        for i in range(len(self._kept) - 1, -1, -1):
            if _begins_with(self._kept[i].ids, ids):
                self._kept.append(self._kept.pop(i))
                return True
        return False

    def take_with_room(self, ids: Sequence[int]) -> KeptPrompt | None:
        """The kept prompt whose tokens begin `ids` and are fewer (at most one: ``keep`` never
        keeps one whose tokens begin another's), taken out of the cache where its cache has room
        for all of `ids` (one sequence: ``KVCache.has_room``); else None (the kept prompts stay)."""
        for i, kept in enumerate(self._kept):
            if len(kept.ids) < len(ids) and _begins_with(ids, kept.ids):
                return self._kept.pop(i) if kept.cache.batch == 1 and kept.cache.has_room(len(ids)) else None
        return None

    def keep(self, ids: list[int], cache: KVCache, most: int = MAX_KEPT) -> None:
        """Keeps `cache`, whose slots hold the keys and values of `ids`, as the most recent: where
        they are too few to be reused (a call that ended early), nothing is kept and the memory
        goes. A kept prompt that `ids` begins with goes (this one gives any prompt at least as
        much), and where a kept one begins with all of `ids` that one stays instead, as the most
        recent. Then the least recently used go while more than `most` are kept, or while the
        memory left free is less than they hold together (the newest stays)."""
        if len(ids) >= MIN_SHARED_TOKENS and not self.extends(ids):
            self._kept = [kept for kept in self._kept if not _begins_with(ids, kept.ids)]
            self._kept.append(KeptPrompt(list(ids), cache))
        while len(self._kept) > max(1, most) or (len(self._kept) > 1 and self._free_bytes is not None
                                                  and self._free_bytes() < self.held_bytes):
            self._kept.pop(0)

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def kept_tokens(self) -> int:
        """Tokens the most recently kept cache holds (0: none kept)."""
        return len(self._kept[-1].ids) if self._kept else 0

    @property
    def held_bytes(self) -> int:
        """Memory the kept caches hold."""
        return sum(kept.cache.held_bytes for kept in self._kept)


def adoptable_bytes(kept: KVCache, max_len: int) -> int:
    """The memory `kept` holds that a cache of `max_len` slots takes over with no copy in
    ``move_slots`` (0 where its slots are copied instead)."""
    return kept.held_bytes if kept.adoptable_by(max_len) else 0


def copy_slots(kept: KVCache, cache: KVCache, n: int, start: int = 0) -> None:
    """Copies slots start..n-1 of every layer of row 0 of `kept` (the same model, dtype and device)
    into row 0 of `cache`, leaving `kept` as it is."""
    cache.reserve(n)
    for (k_new, v_new), (k_old, v_old) in zip(cache.layers, kept.layers):
        k_new[:1, :, start:n].copy_(k_old[:1, :, start:n])  # [1, Hkv, n - start, D]
        v_new[:1, :, start:n].copy_(v_old[:1, :, start:n])


def move_slots(kept: KVCache, cache: KVCache, n: int) -> None:
    """`cache` (batch 1, the same model, dtype and device as `kept`) takes over slots 0..n-1 of
    every layer of `kept`, which is spent: where kept's tensors fit in `cache` (``adoptable_by``)
    they become cache's own, with no copy; else their first n slots are copied."""
    if kept.adoptable_by(cache.max_len):
        cache.adopt(kept)
        return
    cache.reserve(n)
    for k_new, v_new in cache.layers:
        k_old, v_old = kept.pop_layer()  # each of kept's layers goes once copied
        k_new[:, :, :n].copy_(k_old[:, :, :n])  # [1, Hkv, n, D]
        v_new[:, :, :n].copy_(v_old[:, :, :n])
        del k_old, v_old
    kept.layers.clear()
