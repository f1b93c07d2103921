"""The generation engine: prefill then decode over a static KV cache, sampling on the device,
stops on EOS / extra ids / stop strings, batches of different lengths (left padding), streaming,
infilling and Instruct chat."""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from ..data import BUNDLED_VOCAB_SIZE
from ..errors import CheckpointError, InfillingUnsupported, OutOfMemoryError
from ..tokenizer import FILL_MARKER, CodeLlamaTokenizerFast
from .cache import KVCache
from . import arguments, beam_search, fused_decode, memory, options, prompt_cache, shared_prompts, speculative
from .assisted import DraftGuesser, check_vocabularies
from .cuda_graph import GraphDecoder, pick_faster
from .decode_states import MAX_STATES, DecodeState, DecodeStates
from .finite import NO_TOKEN, FiniteWatch, no_token_error
from .folders import generation_defaults, model_folder
from .hf_load_args import read_load_args
from .loader import load_model
from .model import LlamaModel, StepContext
from .options import GenerationConfig, logits_rules_for
from .packing import rows_without_padding
from .prompt_cache import MAX_KEPT, FedTokens, PromptCache, adoptable_bytes, copy_slots, move_slots, reusable_slots
from .prompt_lookup import NgramIndex
from .results import GenerationResult, InfillResult
from .guidance import Guidance
from .logits_rules import StepLog, make_picker
from .scoring import ScoreResult, score_rows
from .stopping import CandidateStops, Criteria, Deadline, StopTracker, cut_at_stop, partial_stop_len
from .token_healing import Healed, PieceIndex


def _flag(name: str, value: Any) -> bool:
    """A True/False switch; None (transformers' "unset") is False."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _cut_front(decode: Callable[[list[int]], str], n: int) -> Callable[[list[int]], str]:
    """`decode` without the first `n` characters of its text."""
    return lambda ids: decode(ids)[n:]


def _is_text(prompts: Any) -> bool:
    """A str or a list of str (or something that is not token ids at all, left for the text
    checks to name), as opposed to token ids: a tensor, an array, ints or lists of ints."""
    if isinstance(prompts, str) or not (isinstance(prompts, (list, tuple)) or hasattr(prompts, "tolist")):
        return True
    if hasattr(prompts, "tolist"):
        return False
    return not prompts or any(isinstance(p, str) for p in prompts)


def stripped_deltas(deltas: Iterable[str]) -> Iterator[str]:
    """The deltas of ``"".join(deltas).strip()``: leading whitespace dropped, trailing whitespace
    held back until more text follows it (as Engine.chat strips its answer)."""
    started, pending = False, ""
    for delta in deltas:
        if not started:
            delta = delta.lstrip()
            if not delta:
                continue
            started = True
        text = pending + delta
        body = text.rstrip()
        pending = text[len(body) :]
        if body:
            yield body


# where the KV cache for a call's whole max_new_tokens does not fit in memory, the call generates
# as many tokens as fit (with a warning), if that is at least this many; else OutOfMemoryError
LEAST_ROOM = 64


class Engine:
    """A loaded model plus its tokenizer.

    >>> engine = Engine.from_pretrained("path/to/CodeLlama-7b-hf")            # doctest: +SKIP
    >>> engine.generate("def fibonacci(n):", max_new_tokens=64).text           # doctest: +SKIP
    >>> engine.infill("def add(a, b):\\n    ", "\\n    return c\\n").middle       # doctest: +SKIP
    """

    def __init__(self, model: LlamaModel, tokenizer: CodeLlamaTokenizerFast, defaults: Mapping[str, Any] | None = None) -> None:
        # A fine-tune may pad the embedding rows to a multiple of 64 past the tokenizer's pieces:
        # those ids are never chosen. Any other difference is the wrong tokenizer.
        rows, pieces = model.config.vocab_size, len(tokenizer)
        if rows != pieces and not (rows % 64 == 0 and 0 < rows - pieces < 64):
            raise CheckpointError(
                f"the tokenizer has {len(tokenizer)} pieces but the model's vocabulary is {model.config.vocab_size}; "
                "pass the tokenizer that belongs to this model"
            )
        self.model, self.tokenizer = model, tokenizer
        self.defaults = dict(defaults or {})
        self.device = model.embed.weight.device
        self.dtype = model.embed.weight.dtype
        # CUDA-graph decode (CUDA + Triton ops): ids are read back every `check_every` steps.
        self.use_cuda_graph: bool | str = True
        self.check_every = 16
        # The captured decode step: "plain" (the model's forward), "fused" (engine.fused_decode:
        # norm, SwiGLU and residual adds folded into the projections), or "auto": for batches the
        # fused kernels take (up to 16 sequences), both are captured and the faster one, checked
        # against the other, is kept. "plain" by default: on an H200 (benches/results, e2e of
        # 2026-11-28) the fused step was no faster (7B batch 1 and 8, 34B batch 1), and "auto" chooses
        # by a timing that can fall either way at each capture, while the two steps round
        # differently: a call's tokens would depend on which one a state happened to keep.
        # `decode_step_used` says which one the last graph runs.
        self.decode_step = "plain"
        self.decode_step_used: str | None = None
        # Before a decode state's step is captured, time the decode attention's launches (how its
        # splits merge, how deep its key loop pipelines) over the state's cache and capture the
        # fastest (kernels.decode_tuning; CUDA with the Triton ops only). Every launch gives the
        # same bits. Off, a shape timed before keeps its pick. `decode_attention_used` names the
        # launch of the last state built (None: the kernel's defaults).
        self.tune_decode_attention = True
        self.decode_attention_used: str | None = None
        # Prefill runs in chunks of at most this many tokens (batch × length) to bound activations,
        # fewer when the free memory is short (engine.memory.prefill_chunk_tokens).
        self.prefill_chunk_tokens = 16384
        # A single-sequence generation's KV cache is kept for the next call whose prompt begins with
        # the same tokens (a chat's next turn): that call prefills only the rest (engine.prompt_cache;
        # GenerationResult.prompt_tokens_reused). Off: every call prefills its whole prompt. The
        # last `max_kept_prompts` are kept (calls alternating between conversations or files), while
        # the memory left free is at least what they hold together.
        self.reuse_prompt_cache = True
        self.max_kept_prompts = MAX_KEPT
        self._prompt_cache = PromptCache(lambda: memory.free_memory_bytes(self.device))
        # Captured decode states (KV cache + graph) kept between calls, one per shape (batch size,
        # decode mode, samples sharing a prompt), at most this many, and only while the free memory
        # holds a new one twice over (engine.decode_states); 1: one shape at a time.
        self.max_decode_states = MAX_STATES
        self._graphs = DecodeStates(lambda b: KVCache.slots_that_fit(self.model.config, b, self.dtype, self.device),
                                    self._prompt_cache.clear)
        # Model work (each step of a generation or stream, a whole beam search, a score) runs
        # under this lock, so several threads may share one Engine: their steps interleave, each
        # generation on its own cache (or leased graph state), never two steps at once (a graph
        # capture forbids other work on the device meanwhile). Held only within a step, never
        # across a stream's yield: a stream left open does not block the others.
        self._run_lock = threading.RLock()
        self._vocab_checked: tuple[Any, Any] | None = None  # (ours, an assistant's) native tokenizers found compatible
        # as an assistant with num_assistant_tokens_schedule="heuristic": the guess count its last call ended with
        self._carried_assistant_tokens: int | None = None
        self._piece_index: PieceIndex | None = None  # token healing's prefix search, for the current tokenizer

    def __repr__(self) -> str:
        if "model" not in self.__dict__:  # construction failed part way
            return object.__repr__(self)
        cfg = self.model.config
        params = sum(p.numel() for p in self.model.parameters())
        size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params / 1e3:.1f}K"
        return (f"Engine({size} parameters, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, vocabulary {cfg.vocab_size}, "
                f"{str(self.dtype).removeprefix('torch.')} on {self.device}, {self.model.ops.name} ops)")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str = "auto",
        tokenizer: CodeLlamaTokenizerFast | str | Path | None = None,
        progress: bool | None = None,
        torch_dtype: str | torch.dtype | None = None,
        adapter: str | Path | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        **transformers_args: Any,
    ) -> "Engine":
        """Loads an HF model folder; the tokenizer comes from the folder unless given.
        ``path`` (and ``adapter``, ``tokenizer``) may also be a repository name such as
        ``"codellama/CodeLlama-7b-hf"`` fetched earlier into the local Hugging Face cache (by
        ``hf download`` or transformers), read there at ``revision`` (a branch, tag or commit;
        default "main"; ``cache_dir``: another cache folder, as transformers' argument); nothing
        is downloaded. ``torch_dtype`` is transformers 4.x's name for ``dtype``. ``adapter``: a
        PEFT LoRA folder merged into the weights as they load (engine.lora); its tokenizer files,
        if any, win. transformers' other loading arguments (``device_map``, ``low_cpu_mem_usage``,
        ...) are read as engine.hf_load_args says."""
        if torch_dtype is not None:
            if dtype is not None:
                raise TypeError("give dtype or torch_dtype (its older name), not both")
            dtype = torch_dtype
        device = read_load_args(transformers_args, device)
        if revision is not None and not isinstance(revision, str):
            raise TypeError(f"revision must be a branch, tag or commit name (str), got {type(revision).__name__}")
        path = model_folder(path, revision, cache_dir)
        lora = None
        if adapter is not None:
            from .lora import LoraAdapter

            lora = LoraAdapter(adapter, cache_dir)  # a bad adapter fails before the base weights are read
        model = load_model(path, dtype=dtype, device=device, backend=backend, progress=progress, adapter=lora)
        if tokenizer is None and lora is not None and ((lora.folder / "tokenizer.json").is_file() or (lora.folder / "tokenizer.model").is_file()):
            tokenizer = lora.folder
        if isinstance(tokenizer, CodeLlamaTokenizerFast):
            tok = tokenizer
        elif tokenizer is not None:
            tok = CodeLlamaTokenizerFast.from_pretrained(tokenizer, cache_dir=cache_dir)
        elif (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file():
            tok = CodeLlamaTokenizerFast.from_pretrained(path)
        elif model.config.vocab_size == BUNDLED_VOCAB_SIZE:
            tok = CodeLlamaTokenizerFast.from_pretrained()
        else:
            raise CheckpointError(f"{path} has no tokenizer files and its vocabulary ({model.config.vocab_size}) is not Code Llama's; "
                                  "pass tokenizer= (--tokenizer on the command line)")
        return cls(model, tok, defaults=generation_defaults(path))

    # ------------------------------------------------------------------ the core loop

    def _config(self, overrides: dict[str, Any], many: bool = False, streams: bool = False, heals: bool = False) -> GenerationConfig:
        """The call's settings over the model's defaults, checked (engine.options). `many`: the
        call can return several sequences per prompt (generate); `heals`: it takes token_healing
        (generate and stream: a prompt the caller wrote, not one the engine built)."""
        cfg = options.resolve(self.defaults, overrides, many, streams)
        if cfg.token_healing and not heals:
            raise ValueError("token_healing is for generate() and stream() prompts; infilling and chat prompts end on "
                             "sentinel or [/INST] tokens that must stay as they are")
        if cfg.assistant_model is not None:
            if not isinstance(cfg.assistant_model, Engine):
                raise TypeError(f"assistant_model must be an Engine (Engine.from_pretrained of a smaller model), "
                                f"not {type(cfg.assistant_model).__name__}")
            pair = (self.tokenizer._native, cfg.assistant_model.tokenizer._native)
            if self._vocab_checked is None or any(a is not b for a, b in zip(pair, self._vocab_checked)):
                # once per pair of tokenizers (a few ms): add_tokens makes a new native tokenizer
                check_vocabularies(pair[0].pieces(), pair[1].pieces())
                self._vocab_checked = pair
        return cfg

    def _prepare(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Left-padded tokens [B, T] and kv_start [B] (number of padding slots per row)."""
        if not prompts:
            raise ValueError("no prompts given: pass a str, a non-empty list of str, or input_ids")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (an empty text still has BOS)")
        vocab = self.model.config.vocab_size
        for p in prompts:
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {vocab}")
        t = max(len(p) for p in prompts)
        rows = [[0] * (t - len(p)) + list(p) for p in prompts]
        tokens = torch.tensor(rows, dtype=torch.long, device=self.device)
        kv_start = torch.tensor([t - len(p) for p in prompts], dtype=torch.long, device=self.device)
        return tokens, kv_start, t

    def _use_graph(self) -> bool:
        """Graph decode on CUDA with the Triton ops; ``use_cuda_graph="eager"`` runs the same
        static-buffer step without capture on any device and ops (for testing)."""
        if self.use_cuda_graph == "eager":
            return True
        if getattr(self.model.ops, "name", "") != "triton" or not self.use_cuda_graph:
            return False
        return self.device.type == "cuda"

    @contextmanager
    def _decode_state(self, b: int, needed: int, greedy: bool, wanted: bool,
                      least: int | None = None, runs: int = 1) -> Iterator[DecodeState | None]:
        """A captured decode state (KV cache + decode graph) for one generation of `b` sequences
        holding up to `needed` tokens (with `least`: or as many as fit, at least `least`), kept
        for later calls of `b` sequences that fit in it (engine.decode_states); None when not
        `wanted` or when another generation is using the one that fits. `runs` > 1: its step reads
        the prompt's slots once per run of that many rows (``_graph_runs``)."""
        if self.decode_step not in ("auto", "plain", "fused"):
            raise ValueError(f"decode_step must be 'auto', 'plain' or 'fused', got {self.decode_step!r}")
        for name in ("max_decode_states", "max_kept_prompts"):
            most = getattr(self, name)
            if isinstance(most, bool) or not isinstance(most, int) or most < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {most!r}")
        keep = self.max_decode_states
        if not wanted:
            yield None
            return
        with ExitStack() as lease:
            try:
                state = lease.enter_context(self._graphs.lease(b, needed, greedy, self._build_decode_state, least, runs, keep))
            except OutOfMemoryError:
                state = None  # the uncaptured loop's own cache raises it again, with the sizes
            if state is not None:
                self.decode_step_used = state.decoder.name
            yield state

    def _build_decode_state(self, b: int, capacity: int, greedy: bool, least: int | None = None, runs: int = 1) -> DecodeState:
        """A new KV cache of `capacity` slots (with `least`: or as many as fit, at least `least`)
        for `b` sequences and the decode step captured over it: the plain or fused step as
        `decode_step` says ("auto": both, where the fused kernels take the batch, keeping the
        faster of the two that agree); with `runs` > 1, a step for rows in runs of that many sharing
        their prompt's slots."""
        # held whole on any device: the decode step (captured or not) moves its slot on the device,
        # where the cache cannot see it to grow
        if least is None:
            cache = KVCache(self.model.config, b, capacity, self.dtype, self.device, grow=False)
        else:
            cache = KVCache.at_most(self.model.config, b, capacity, least, self.dtype, self.device, grow=False)
        capacity = cache.max_len
        kv_start = torch.zeros(b, dtype=torch.long, device=self.device)
        self._tune_decode_attention(cache)

        def decoder(kind: str) -> GraphDecoder:
            forward = (lambda tok, ctx, caches: fused_decode.fused_decode_forward(self.model, tok, ctx, caches)) if kind == "fused" else None
            return GraphDecoder(self.model, cache.layers, kv_start, capacity, greedy, forward=forward, name=kind,
                                capture=self.use_cuda_graph is True, shared_runs=runs)

        if self.decode_step == "auto" and b <= getattr(self.model.ops, "fused_max_rows", 0):
            candidates = [decoder("plain")]
            try:
                candidates.append(decoder("fused"))
            except Exception as exc:  # noqa: BLE001  (a kernel this GPU or Triton cannot build: keep the plain step)
                warnings.warn(f"the fused decode step is unavailable here, using the plain one: {type(exc).__name__}: {exc}",
                              RuntimeWarning, stacklevel=2)
            chosen = pick_faster(candidates)
        else:
            chosen = decoder("fused" if self.decode_step == "fused" else "plain")
        return DecodeState(b, greedy, cache, kv_start, chosen, runs=runs)

    def _graph_runs(self, b: int, runs: int, prompt_slots: int) -> int:
        """The runs of rows sharing their prompt that a captured decode step for this call reads
        once per run: `runs` where the ops' decode attention does so at this size
        (``shared_decode_runs``), else 1. Set by the call alone, so its tokens never depend on
        which state served it."""
        choose = getattr(self.model.ops, "shared_decode_runs", None)
        if runs <= 1 or choose is None:
            return 1
        cfg = self.model.config
        return choose(b, runs, prompt_slots, cfg.num_key_value_heads, cfg.head_dim, self.dtype.itemsize)

    def _decode_reads_prompt_once(self, b: int, runs: int, t: int, graph: GraphDecoder | None) -> bool:
        """Whether every decode step of a call of `b` rows in runs of `runs` > 1 that share their
        first `t` slots reads those from each run's first row alone: the captured step where its
        state was built to (``_graph_runs``), else the ops' decode attention at this size
        (``Ops.decode_reads_prompt_once``). The prefill then copies nothing into the other rows."""
        if runs <= 1:
            return False
        if graph is not None:
            return graph.shared_runs > 1
        ask = getattr(self.model.ops, "decode_reads_prompt_once", None)
        cfg = self.model.config
        return bool(ask is not None and ask(b, runs, t, cfg.num_key_value_heads, cfg.head_dim, self.dtype, self.device))

    def _tune_decode_attention(self, cache: KVCache) -> None:
        """The decode attention launch for this cache's shape, timed at its full length (the
        longest call it serves), where `tune_decode_attention` is on and the ops can time one;
        `decode_attention_used` then names the launch the state's step captures."""
        ops = self.model.ops
        tune = getattr(ops, "tune_decode_attention", None)
        self.decode_attention_used = None
        if tune is None or not cache.layers:
            return
        heads = self.model.config.num_attention_heads
        k_cache, v_cache = cache.layers[0]  # every layer's cache has the same shape
        if self.tune_decode_attention:
            try:
                tune(heads, k_cache, v_cache, cache.max_len)
            except Exception as exc:  # noqa: BLE001  (the launch picked before, or the kernel's default, still serves)
                warnings.warn(f"timing the decode attention's launches failed: {type(exc).__name__}: {exc}",
                              RuntimeWarning, stacklevel=3)
        from ..kernels.decode_tuning import label  # Triton is there: these are the Triton ops

        launch = ops.decode_launches.current(heads, k_cache)
        self.decode_attention_used = label(launch) if launch else None

    def _on_device(self) -> Any:
        """Model work runs with the model's GPU as the current CUDA device: Triton launches,
        streams and graph captures follow the current device, not the tensors' (a model on
        cuda:1 while the caller's current device is cuda:0)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    def release_cache(self) -> None:
        """Frees the KV caches and captured decode steps kept between calls (the next call that
        needs one builds it again; the next prompt is prefilled whole); a generation still running
        keeps its own until it ends. Call it after changing the model's weights in place."""
        with self._run_lock, self._on_device():
            self._graphs.clear()
            self._prompt_cache.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _new_cache(self, b: int, max_len: int, least: int, sparse: bool = False, headroom: bool = False) -> KVCache:
        """A growing cache for a call of `b` sequences (KVCache.at_most; `sparse`, `headroom`: KVCache's). Where
        the memory the kept prompt caches hold is what it lacks (it would be shorter than
        `max_len`, or none), the kept caches go and the cache is sized again."""
        try:
            cache = KVCache.at_most(self.model.config, b, max_len, least, self.dtype, self.device, sparse=sparse,
                                    headroom=headroom)
        except OutOfMemoryError:
            if not self._prompt_cache.kept_tokens:
                raise
            cache = None
        if cache is not None and (cache.max_len == max_len or not self._prompt_cache.kept_tokens):
            return cache
        self._prompt_cache.clear()
        del cache
        return KVCache.at_most(self.model.config, b, max_len, least, self.dtype, self.device, sparse=sparse, headroom=headroom)

    def _call_cache(self, stack: ExitStack, state: DecodeState | None, b: int, max_len: int, least: int,
                    kv_start_now: torch.Tensor, fed: FedTokens, samples_of: Sequence[int] | None = None,
                    sparse: bool = False) -> tuple[KVCache, torch.Tensor, GraphDecoder | None, int]:
        """(cache, kv_start, captured decoder or None, slots reused) for one call of `b` sequences:
        the decode state's, or a new cache of `max_len` slots (at least `least`), taking a kept
        prompt's slots where `fed` tracks a prompt that begins with its tokens. When the call ends
        (`stack` closes, however it ends) the new cache is kept, or the state notes ``fed.ids``.
        `samples_of`: every row is this one prompt (its samples); a new cache then copies the kept
        prompt's slots for the tokens it begins with into row 0 (the prefill copies them on to the
        others), and the kept prompt stays for a later call (the samples' own prompt, kept when
        they end, replaces it: ``_stash``). On a decode state, the samples (and a sequence whose
        state holds less of it) copy them from a kept prompt or a kept state of one sequence
        (``_copy_kept_prompt``); a sequence of another conversation first stashes the one the
        state held (``_stash``). `sparse`: a new cache's rows will mostly leave their prompt's
        slots unwritten (KVCache)."""
        if state is not None:
            state.kv_start.copy_(kv_start_now)
            held, state.ids = state.ids, []  # this call writes the cache: what it held is known here alone
            prompt = fed.seq if fed.tracking else samples_of
            if prompt is None:
                return state.cache, state.kv_start, state.decoder, 0
            own = reusable_slots(held, prompt) if fed.tracking else 0
            if fed.tracking and self.reuse_prompt_cache and 2 * own < len(held):
                self._stash(held, state.cache)  # mostly another conversation: the one it held is kept
            # a kept prompt, or a kept state of another shape, may hold more of the prompt (another
            # conversation's next turn, the dialog a chat's samples continue, its last turn in
            # another decode mode): its slots are copied into row 0
            reused = max(own, self._copy_kept_prompt(prompt, state.cache, more_than=own, drop=fed.tracking))
            if fed.tracking:
                stack.callback(lambda: setattr(state, "ids", fed.ids))
            return state.cache, state.kv_start, state.decoder, reused
        if samples_of is not None:
            cache = self._new_cache(b, max_len, least, sparse)  # it drops the kept prompt where that memory is needed
            return cache, kv_start_now, None, self._copy_kept_prompt(samples_of, cache)
        cache = None
        kept, reused = self._prompt_cache.take(fed.seq) if fed.tracking else (None, 0)
        if kept is not None:
            try:
                # the kept tensors it adopts need no new memory: only the rest must be free
                cache = KVCache(self.model.config, b, max_len, self.dtype, self.device,
                                adopting_bytes=adoptable_bytes(kept.cache, max_len), headroom=True)
                move_slots(kept.cache, cache, reused)
            except OutOfMemoryError:  # the kept cache's memory is needed: the whole prompt is prefilled
                cache, reused = None, 0
            kept = None  # its tensors now belong to `cache`, or are freed before a new cache is sized
        if cache is None:
            cache = self._new_cache(b, max_len, least, sparse, headroom=fed.tracking)  # kept when the call ends
        if fed.tracking:
            stack.callback(lambda: self._keep_prompt(fed.ids, cache))
        return cache, kv_start_now, None, reused

    def _prefill(self, tokens: torch.Tensor, kv_start: torch.Tensor, cache: KVCache, start: int = 0,
                 stats: dict[str, float] | None = None, runs: int | None = None, copy_repeats: bool = True) -> torch.Tensor:
        """Runs the prompt through the model, in chunks when batch × length exceeds the prefill
        budget: `prefill_chunk_tokens`, or fewer when their activations would not fit in half the
        free memory (engine.memory); returns the last position's logits [B, V]. `start`: the
        cache already holds the keys and values of the first `start` tokens (a kept prompt's), in
        the first row of each run of rows that repeat.
        Rows that repeat (num_return_sequences), and the tokens all rows begin with, are prefilled
        once (engine.shared_prompts); `stats["prompt_tokens_shared"]` counts the tokens that saved.
        `runs`: ``shared_prompts.run_length`` of the rows, where the caller has it; ``copy_repeats``
        False: the rows that repeat another keep no copy of its prompt's slots (every step after
        reads them from each run's first row alone, ``_decode_reads_prompt_once``)."""
        b, t = tokens.shape
        cache.reserve(t)  # a growing cache takes the prompt's slots before the free memory sizes the chunks
        # (with `start`, every run's first row holds the first `start` slots: the copies fill the rest)
        n = shared_prompts.run_length(tokens, kv_start) if runs is None else runs
        layers = cache.layers if n == 1 else shared_prompts.distinct_rows(cache.layers, n)
        tokens, kv_start = tokens[::n].contiguous(), kv_start[::n].contiguous()  # [B / n, T], [B / n]
        starts = kv_start.tolist()
        prefix = shared_prompts.shared_prefix(tokens, kv_start) if start == 0 else 0
        if prefix:  # the tokens every row begins with, in one row without padding, then copied
            head = starts.index(0)
            self._prefill_chunks(tokens[head : head + 1], kv_start[head : head + 1],
                                 [(k[head : head + 1], v[head : head + 1]) for k, v in layers], 0, prefix, t)
            shared_prompts.copy_prefix(layers, head, starts, prefix)
        logits = self._prefill_chunks(tokens, kv_start, layers, max(start, prefix), t, t)
        if n > 1:
            if copy_repeats:
                shared_prompts.copy_to_repeats(cache.layers, n, t)
            logits = logits.repeat_interleave(n, dim=0)  # [B, V]
        if stats is not None:  # the tokens neither prefilled nor reused (those of the first `start` slots)
            whole = n * sum(t - s for s in starts)  # every row's own tokens
            done = max(start, prefix)
            stats["prompt_tokens_shared"] = whole - sum(t - max(s, done) for s in starts) - done
        return logits

    def _prefill_chunks(self, tokens: torch.Tensor, kv_start: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]],
                        c_start: int, c_end: int, t: int) -> torch.Tensor:
        """Slots c_start..c_end-1 of the prompts tokens [B, T] (T = t) through the model into `layers`, in
        chunks of the prefill budget; the last position's logits [B, V]."""
        budget = memory.prefill_chunk_tokens(self.model.config, self.dtype, self.device, self.prefill_chunk_tokens)
        chunk = max(1, budget // tokens.shape[0])
        positions = (torch.arange(t, device=self.device)[None, :] - kv_start[:, None]).clamp_min(0)
        starts = kv_start.tolist()
        logits = None
        for c0 in range(c_start, c_end, chunk):
            c1 = min(c_end, c0 + chunk)
            ctx = StepContext(positions[:, c0:c1], torch.arange(c0, c1, device=self.device), c0, kv_start, c1, rope_len=t,
                              rows=rows_without_padding(starts, c0, c1, self.device))  # prompts of different lengths: packed
            logits = self.model(tokens[:, c0:c1], ctx, layers)
        assert logits is not None
        return logits

    def _steps(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, stats: dict[str, float],
               check_every: int | None = None, warn_stacklevel: int = 5, stop_ids: Iterable[int] = (),
               logprobs: list[list[Any]] | None = None, top_logprobs: int = 0,
               first_allowed: Sequence[tuple[int, ...] | None] | None = None, log: StepLog | None = None) -> Iterator[list[int]]:
        """``_decode_steps`` with each step run under ``torch.inference_mode`` and the caller's
        mode untouched between steps: a stream the caller holds open (or drops) must not leave its
        thread in inference mode with gradients off."""
        # warnings from the steps point one frame further up: past this wrapper
        steps = self._decode_steps(prompts, cfg, stats, check_every, warn_stacklevel + 1, stop_ids, logprobs, top_logprobs,
                                   first_allowed, log)
        try:
            while True:
                with self._run_lock, torch.inference_mode(), self._on_device():
                    try:
                        host = next(steps)
                    except StopIteration:
                        return
                yield host
        finally:
            with self._run_lock, torch.inference_mode(), self._on_device():
                steps.close()  # its clean-up (leases, caches) now, not whenever it is collected

    def _decode_steps(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, stats: dict[str, float],
                      check_every: int | None = None, warn_stacklevel: int = 5, stop_ids: Iterable[int] = (),
                      logprobs: list[list[Any]] | None = None, top_logprobs: int = 0,
                      first_allowed: Sequence[tuple[int, ...] | None] | None = None, log: StepLog | None = None) -> Iterator[list[int]]:
        """Yields the sampled token of every sequence, step by step (host lists of length B).
        On CUDA with the Triton ops, decode steps are CUDA-graph replays and the host reads the
        ids every `check_every` steps. `warn_stacklevel` points warnings at the user's call;
        `stop_ids` cannot be chosen for the first `cfg.min_new_tokens` tokens. With `logprobs`,
        each step's chosen tokens' log-probabilities (host lists of length B) are appended to it
        before the step is yielded; with ``top_logprobs`` = k each entry is a list instead: that
        log-probability, the k likeliest tokens' log-probabilities, then their ids. ``first_allowed``:
        per sequence, the ids its first token may be (token healing; None: any). ``log`` keeps
        each choice's scores and logits (on the captured step, for every step of a block)."""
        # time to first token counts from here: a cache allocated or a decode step captured for
        # this call is part of the wait for its first token
        start = time.perf_counter()
        tokens, kv_start_now, t = self._prepare(prompts)
        cfg = cfg.for_prompt_length(t)
        arguments.warn_past_context(t, cfg.max_new_tokens, self.model.config, warn_stacklevel)
        b = tokens.shape[0]
        if cfg.max_new_tokens == 0:
            return
        params = cfg.sampling()
        max_len = t + cfg.max_new_tokens
        gen = self._generator(cfg.seed)
        vocab, known = self.model.config.vocab_size, len(self.tokenizer)
        rules = logits_rules_for(cfg, set(stop_ids), vocab, warn_stacklevel)
        if first_allowed is not None:
            rules = dataclasses.replace(rules, first_allowed=tuple(first_allowed))
        # NaN/inf logits raise where the host reads the tokens (engine.finite); a row the rules leave
        # no token is chosen NO_TOKEN (-1), fed to the model as id 0, and raises in the caller if
        # that sequence is still going
        watch = FiniteWatch(self.device)
        guidance = self._guidance(cfg, prompts, cfg.num_return_sequences)
        pick = make_picker(params, rules, gen, tokens, kv_start_now, vocab, cfg.max_new_tokens, known, log, guidance)
        # the captured step takes the argmax itself only when nothing happens between logits and choice
        guessing = cfg.prompt_lookup_num_tokens is not None or cfg.assistant_model is not None
        graph_greedy = (params.greedy and not rules.active and known == vocab and logprobs is None and log is None and guidance is None
                        and not guessing)

        if guessing and b != 1:
            name = "prompt_lookup_num_tokens" if cfg.prompt_lookup_num_tokens is not None else "assistant_model"
            raise ValueError(f"{name} decodes one sequence at a time (batch 1, as in transformers); "
                             f"this call decodes {b} (prompts × num_return_sequences)")

        def logprob_of(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
            """log p(chosen) under the raw logits [B, V] -> [B]; with top_logprobs = k, [B, 1 + 2k]:
            that, the k likeliest tokens' log-probabilities, their ids (floats: exact below 2^24)."""
            logp = logits.float().log_softmax(-1)
            own = logp.gather(1, chosen[:, None])  # [B, 1]
            if not top_logprobs:
                return own[:, 0]
            values, ids = logp.topk(top_logprobs, dim=-1)  # [B, k] each, likeliest first
            return torch.cat([own, values, ids.float()], dim=1)

        def watched_pick(logits: torch.Tensor) -> torch.Tensor:
            watch.see(logits)
            return pick(logits)

        with ExitStack() as stack:
            # the whole cache where it fits, else as much as fits (the guessing paths write
            # several slots ahead: they need all of it)
            least = max_len if guessing else min(max_len, t + LEAST_ROOM)
            wanted = self._use_graph() and cfg.max_new_tokens > 1
            # samples of one prompt: every row of a run holds the prompt's keys and values in slots < t
            runs = shared_prompts.run_length(tokens, kv_start_now) if b > 1 else 1
            state = stack.enter_context(self._decode_state(b, max_len, graph_greedy, wanted, least,
                                                           self._graph_runs(b, runs, t) if wanted else 1))
            # one sequence: the keys and values of the tokens this prompt begins with come from a
            # kept cache or the decode state's own, and what the cache holds is kept when it ends
            reusable = self._reuses_prompts(guidance)
            fed = FedTokens(tokens[0].tolist() if reusable and b == 1 else [], reusable and b == 1)
            # the samples of one prompt (every row alike) copy a kept prompt's slots, where it is kept
            samples_of = tokens[0].tolist() if reusable and b > 1 and runs == b else None
            # runs of rows that the plain loop's steps read their prompt from the first row of: the
            # others never hold it (below)
            sparse = state is None and self._decode_reads_prompt_once(b, runs, t, None)
            cache, kv_start, graph, reused = self._call_cache(stack, state, b, max_len, least, kv_start_now, fed, samples_of, sparse)
            fed.filled = reused
            stats["prompt_tokens_reused"] = reused
            # generating k tokens writes the first k - 1 into the cache after the prompt
            max_new = min(cfg.max_new_tokens, cache.max_len - t + 1)
            if max_new < cfg.max_new_tokens:
                need = self.model.config.kv_bytes_per_token(self.dtype.itemsize) * b * max_len
                warnings.warn(f"max_new_tokens={cfg.max_new_tokens} needs a {need / 2**30:.2f} GiB KV cache, more than "
                              f"{self.device} has free: this call generates at most {max_new} tokens (finish reason 'length' "
                              "past them)", RuntimeWarning, stacklevel=warn_stacklevel)
            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
            # samples whose steps read their prompt once per run (or that take no step) need no
            # copies of it in their other rows
            copies = max_new > 1 and not self._decode_reads_prompt_once(b, runs, t, graph)
            first = self._prefill(tokens, kv_start, cache, start=reused, stats=stats, runs=runs, copy_repeats=copies)
            fed.filled = t
            if samples_of is not None:  # the prompt's slots (row 0's) are kept when the call ends: the
                stack.callback(self._stash, samples_of, cache)  # next turn reuses them, whichever sample it continues
            nxt = watched_pick(first)
            host = nxt.tolist()
            fed.chosen(host)
            watch.check(self.dtype, "at the first generated token")
            stats["prefill_s"] = time.perf_counter() - start
            if logprobs is not None:
                logprobs.append(logprob_of(first, nxt.clamp_min(0)).tolist())
            yield host
            if guessing and cfg.max_new_tokens > 1:
                adapt = False
                if cfg.prompt_lookup_num_tokens is not None:
                    guesser: speculative.Guesser = NgramIndex(cfg.max_matching_ngram_size)
                    per_step = cfg.prompt_lookup_num_tokens
                else:
                    guesser = stack.enter_context(self._draft_guesser(cfg, max_len))
                    draft = cfg.assistant_model
                    adapt = cfg.num_assistant_tokens_schedule != "constant"
                    # "heuristic" goes on from the count the assistant's last such call ended with
                    carried = draft._carried_assistant_tokens if cfg.num_assistant_tokens_schedule == "heuristic" else None
                    per_step = carried or cfg.num_assistant_tokens
                guesser.extend(list(prompts[0]) + host)
                picked = [1]  # tokens chosen so far: each choice here is a token emitted (the first came from the prefill)

                def checked_pick(logits: torch.Tensor) -> torch.Tensor:
                    # NaN checked at each choice, before later positions of the same pass are
                    # chosen: the checking loop reads each choice at once anyway (a NO_TOKEN choice
                    # differs from every guess, so it ends the pass and reaches the caller)
                    nxt = watched_pick(logits)
                    picked[0] += 1
                    watch.check(self.dtype, f"at generated token {picked[0]}")
                    return nxt

                emitted = 1  # the first token, chosen from the prefill
                try:
                    for step in speculative.guess_and_check(self.model, cache.layers, guesser, t, cfg.max_new_tokens, per_step,
                                                            set(stop_ids), checked_pick, logprob_of, logprobs, stats, time.perf_counter,
                                                            graph, adapt):
                        # the cache holds the prompt and every token emitted but the newest (a pass
                        # feeds its kept guesses; the slots of guesses it rejected are not counted)
                        fed.chosen(step)
                        emitted += len(step)
                        fed.filled = t + emitted - 1
                        yield step
                finally:
                    if cfg.num_assistant_tokens_schedule == "heuristic" and cfg.assistant_model is not None and "num_tokens" in stats:
                        cfg.assistant_model._carried_assistant_tokens = stats["num_tokens"]
                sync()
                return
            lengths = t - kv_start  # real prompt lengths [B]
            decode_start = time.perf_counter()
            if graph is not None:
                every = check_every or self.check_every
                graph.start(nxt.clamp_min(0), lengths, t)
                lp_shape = (b, max_new) + ((1 + 2 * top_logprobs,) if top_logprobs else ())
                lp_out = torch.zeros(lp_shape, dtype=torch.float32, device=self.device) if logprobs is not None else None
                done = 1
                while done < max_new:
                    n = min(every, max_new - done)
                    for i in range(n):
                        logits = graph.replay()
                        if not graph_greedy:
                            nxt = pick(logits)
                            graph.tok.copy_(nxt.clamp_min(0)[:, None])
                            graph.out[:, done - 1 + i].copy_(nxt)
                            if lp_out is not None:
                                lp_out[:, done - 1 + i] = logprob_of(logits, nxt.clamp_min(0))
                    block = graph.out[:, done - 1 : done - 1 + n].tolist()  # the one sync per block
                    fed.chosen(block[0])  # the block's replays fed tokens done-1 .. done+n-2 into slots t+done-1 ..
                    fed.filled = t + done + n - 1
                    graph.watch.check(self.dtype, f"among generated tokens {done + 1} to {done + n}")
                    lp_block = lp_out[:, done - 1 : done - 1 + n].tolist() if lp_out is not None else None
                    stats["decode_tokens"] += b * n
                    stats["decode_s"] = time.perf_counter() - decode_start
                    done += n
                    for i in range(n):
                        if logprobs is not None and lp_block is not None:
                            logprobs.append([row[i] for row in lp_block])
                        yield [row[i] for row in block]
                return
            shared = (runs, t) if runs > 1 else None
            for step in range(1, max_new):
                slot = t + step - 1
                try:
                    cache.reserve(slot + 1)  # a growing cache's room for this step
                except OutOfMemoryError as exc:  # memory taken since the call checked the whole cache: keep what is made
                    warnings.warn(f"the KV cache could not grow past {slot} tokens, so this call ends after {step} generated "
                                  f"tokens (finish reason 'length'): {exc}", RuntimeWarning, stacklevel=warn_stacklevel)
                    break
                ctx = StepContext((lengths + step - 1)[:, None], torch.tensor([slot], device=self.device), slot, kv_start, slot + 1,
                                  shared_prompt=shared)
                logits = self.model(nxt.clamp_min(0)[:, None], ctx, cache.layers)
                fed.filled = slot + 1  # the last token chosen is in the cache now
                nxt = watched_pick(logits)
                host = nxt.tolist()
                fed.chosen(host)
                watch.check(self.dtype, f"at generated token {step + 1}")
                stats["decode_tokens"] += b
                stats["decode_s"] = time.perf_counter() - decode_start
                if logprobs is not None:
                    logprobs.append(logprob_of(logits, nxt.clamp_min(0)).tolist())
                yield host
            sync()

    @contextmanager
    def _draft_guesser(self, cfg: GenerationConfig, max_len: int) -> Iterator[DraftGuesser]:
        """The assistant's guesser for one generation of up to `max_len` tokens: on its own
        captured decode step and cache when it has one free, else on a cache of its own."""
        draft = cfg.assistant_model
        assert isinstance(draft, Engine)
        with draft._decode_state(1, max_len, False, draft._use_graph() and cfg.max_new_tokens > 1) as state:
            graph = None
            if state is not None:
                cache, kv_start, graph = state.cache, state.kv_start, state.decoder
                kv_start.zero_()
                state.ids = []  # the guesses overwrite its cache: the tokens it held are gone
            else:
                cache = KVCache(draft.model.config, 1, max_len, draft.dtype, draft.device)
                kv_start = torch.zeros(1, dtype=torch.long, device=draft.device)
            vocab = min(self.model.config.vocab_size, len(self.tokenizer), draft.model.config.vocab_size)
            yield DraftGuesser(draft.model, cache.layers, graph, lambda tokens: draft._prefill(tokens, kv_start, cache),
                               vocab, cfg.assistant_confidence_threshold)

    def _run(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, stop_ids: set[int] | Sequence[set[int]],
             decoders: Sequence[Callable[[list[int]], str]], return_logprobs: bool = False, top_logprobs: int = 0,
             first_allowed: Sequence[tuple[int, ...] | None] | None = None, output_scores: bool = False,
             output_logits: bool = False) -> GenerationResult:
        """Generates for `prompts` until each stops; `stop_ids`: one set for all, or one per prompt;
        `first_allowed`: per prompt, the ids its first token may be (token healing);
        `output_scores`/`output_logits`: keep each step's scores/logits (transformers' names)."""
        stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_tokens": 0}
        deadline = Deadline(cfg.max_time)
        rows = [stop_ids] * len(prompts) if isinstance(stop_ids, (set, frozenset)) else list(stop_ids)
        tracker = StopTracker(rows, cfg.stop, decoders, Criteria(cfg.stopping_criteria, prompts) if cfg.stopping_criteria else None)
        steps: list[list[Any]] | None = [] if return_logprobs or top_logprobs else None
        log = StepLog(cfg.sampling(), output_scores, output_logits, cfg.renormalize_logits) if output_scores or output_logits else None
        taken = 0  # steps read (the captured step may have run a few more in its last block)
        streamer = cfg.streamer
        if streamer is not None:
            if len(prompts) != 1:
                raise ValueError(f"streamer takes one sequence (as transformers' streamers do); this call generates {len(prompts)} "
                                 "(prompts × num_return_sequences)")
            streamer.put(torch.tensor([list(prompts[0])]))  # the prompt first, as transformers does (skip_prompt=True skips it)
        try:
            for host in self._steps(prompts, cfg, stats, stop_ids=set().union(*rows), logprobs=steps, top_logprobs=top_logprobs,
                                    first_allowed=first_allowed, log=log):
                taken += 1
                tracker.push(host, steps[-1] if steps else None)
                if streamer is not None:
                    streamer.put(torch.tensor(host))  # [1]: each new token, a final stop id included, as transformers
                if deadline.passed():
                    tracker.out_of_time()
                if tracker.all_done:
                    break
        finally:
            if streamer is not None:
                streamer.end()  # also on an error, so that a TextIteratorStreamer's reader is not left waiting
        prompt_tokens, reused = sum(len(p) for p in prompts), int(stats.get("prompt_tokens_reused", 0))
        prefilled = prompt_tokens - reused - int(stats.get("prompt_tokens_shared", 0))  # each repeated row's tokens once
        token_logprobs, tops = [list(lp) for lp in tracker.logprobs], None
        if top_logprobs:  # each entry: own log-probability, k values, k ids
            k = top_logprobs
            tops = [[[(int(e[1 + k + j]), e[1 + j]) for j in range(k)] for e in row] for row in token_logprobs]
            token_logprobs = [[e[0] for e in row] for row in token_logprobs]
        return GenerationResult(
            texts=tracker.texts(),
            token_ids=[list(i) for i in tracker.ids],
            finish_reasons=[r or "length" for r in tracker.reasons],
            prompt_tokens=[len(p) for p in prompts],
            time_to_first_token_s=stats["prefill_s"],
            decode_tokens_per_s=stats["decode_tokens"] / stats["decode_s"] if stats["decode_s"] > 0 else 0.0,
            prefill_tokens_per_s=prefilled / stats["prefill_s"] if stats["prefill_s"] > 0 else 0.0,
            total_s=stats["prefill_s"] + stats["decode_s"],
            token_logprobs=token_logprobs if return_logprobs or top_logprobs else None,
            top_logprobs=tops,
            scores=None if log is None or log.scores is None else tuple(log.scores[:taken]),
            logits=None if log is None or log.logits is None else tuple(log.logits[:taken]),
            guesses_made=int(stats.get("guesses_made", 0)),
            guesses_kept=int(stats.get("guesses_kept", 0)),
            prompt_tokens_reused=reused,
        )

    def _run_beams(self, prompts: Sequence[Sequence[int]], cfg: GenerationConfig, stop_ids: Sequence[set[int]],
                   decoders: Sequence[Callable[[list[int]], str]], return_logprobs: bool,
                   first_allowed: Sequence[tuple[int, ...] | None] | None = None, output_scores: bool = False,
                   output_logits: bool = False, top_logprobs: int = 0) -> GenerationResult:
        """Beam search (engine.beam_search) for each prompt; ``num_return_sequences`` rows per
        prompt, best first. A final stop id is left out of the tokens, and a stop string cuts the
        text, as in plain decoding. ``return_logprobs``: each returned beam's tokens'
        log-probabilities under the raw logits (``top_logprobs=K``: with the K likeliest at each
        position); ``output_scores``/``output_logits``: each step's, and the returned beams'
        ``beam_indices``."""
        deadline = Deadline(cfg.max_time)
        tokens, kv_start, t = self._prepare(prompts)
        cfg = cfg.for_prompt_length(t)
        arguments.warn_past_context(t, cfg.max_new_tokens, self.model.config, 4)
        n = cfg.num_return_sequences
        vocab = self.model.config.vocab_size
        if cfg.max_new_tokens == 0:
            out = beam_search.BeamOutput([[] for _ in range(len(prompts) * n)], [0.0] * (len(prompts) * n),
                                         ["length"] * (len(prompts) * n), 0, 0.0, 0.0)
        else:
            rules = logits_rules_for(cfg, set().union(*stop_ids), vocab, 4)
            if first_allowed is not None:
                rules = dataclasses.replace(rules, first_allowed=tuple(first_allowed))
            settings = beam_search.BeamSettings(cfg.num_beams, cfg.length_penalty, cfg.early_stopping, n, cfg.sampling(),
                                                cfg.renormalize_logits)
            ends = CandidateStops(tokens, cfg.stop, decoders, cfg.stopping_criteria or (), deadline)
            k, rows_run = cfg.num_beams, len(prompts) * cfg.num_beams
            with self._run_lock, torch.inference_mode(), self._on_device(), ExitStack() as stack:
                started = time.perf_counter()
                # every step on a captured decode state's step, as plain decoding's: its cache holds
                # all of the beams' slots (a prompt's beams share its slots, read once per step)
                wanted = self._use_graph() and cfg.max_new_tokens > 1
                state = stack.enter_context(self._decode_state(rows_run, t + cfg.max_new_tokens, False, wanted, None,
                                                               self._graph_runs(rows_run, k, t) if wanted else 1))
                if state is not None:
                    state.ids = []  # the beams overwrite its cache: the tokens it held are gone
                guidance = self._guidance(cfg, [p for p in prompts for _ in range(k)], k)
                reusable = len(prompts) == 1 and self._reuses_prompts(guidance)
                out = beam_search.beam_search(self.model, self._prefill, tokens, kv_start, cfg.max_new_tokens, settings, rules,
                                              stop_ids, len(self.tokenizer), self.dtype, self._generator(cfg.seed),
                                              ends if ends.active else None, output_scores or output_logits, return_logprobs,
                                              guidance, top_logprobs, None if state is None else (state.cache, state.decoder), started,
                                              (lambda cache: self._copy_kept_prompt(list(prompts[0]), cache)) if reusable else None,
                                              (lambda cache, answer: self._keep_prompt(list(prompts[0]) + answer, cache))
                                              if reusable else None,
                                              cfg.max_new_tokens > 1 and not self._decode_reads_prompt_once(
                                                  rows_run, k, t, None if state is None else state.decoder))
        rows = [k for k in range(len(prompts)) for _ in range(n)]
        ids = [seq[:-1] if reason == "eos" else seq for seq, reason in zip(out.tokens, out.reasons)]
        logprobs = None if out.token_logprobs is None else [lp[: len(i)] for lp, i in zip(out.token_logprobs, ids)]
        tops = None if out.top_logprobs is None else [[[(int(j), v) for j, v in pairs] for pairs in row[: len(i)]]
                                                     for row, i in zip(out.top_logprobs, ids)]
        if cfg.max_new_tokens == 0:  # nothing generated: empty lists, as plain decoding gives
            logprobs, tops = ([[] for _ in ids] if wanted else None for wanted in (return_logprobs, top_logprobs))
        texts = [decoders[k](i) for k, i in zip(rows, ids)]
        texts = [cut_at_stop(text, cfg.stop) if reason == "stop" else text for text, reason in zip(texts, out.reasons)]
        # tokens/s: beam tokens run through the model (every beam of every prompt, each step)
        beam_tokens = len(prompts) * cfg.num_beams * max(0, out.steps - 1)
        return GenerationResult(
            texts=texts, token_ids=ids, finish_reasons=out.reasons,
            prompt_tokens=[len(prompts[k]) for k in rows], time_to_first_token_s=out.prefill_s,
            decode_tokens_per_s=beam_tokens / out.decode_s if out.decode_s > 0 else 0.0,
            prefill_tokens_per_s=(sum(len(p) for p in prompts) - out.reused) / out.prefill_s if out.prefill_s > 0 else 0.0,
            total_s=out.prefill_s + out.decode_s, sequence_scores=out.scores, token_logprobs=logprobs, top_logprobs=tops,
            scores=out.step_scores if output_scores else None, logits=out.step_logits if output_logits else None,
            beam_indices=out.beam_indices, prompt_tokens_reused=out.reused)

    def _reuses_prompts(self, guidance: Guidance | None) -> bool:
        """Whether a call takes and keeps prompts' keys and values (engine.prompt_cache): not with
        guidance, nor with dynamic RoPE scaling (a key depends on the sequence's length)."""
        return self.reuse_prompt_cache and guidance is None and self.model.config.rope_scaling_type != "dynamic"

    def _copy_kept_prompt(self, prompt: Sequence[int], cache: KVCache, more_than: int = 0, drop: bool = False) -> int:
        """Copies into row 0 of `cache` the keys and values of `prompt`'s leading tokens that a kept
        prompt cache, or a kept decode state of one sequence, holds (``reusable_slots``), where one
        gives more than `more_than`; returns how many (0: none). What held them keeps them, but a
        kept prompt cache goes where `drop` (its tokens now live in `cache`)."""
        n = self._prompt_cache.copy_into(prompt, cache, more_than, drop)
        return max(n, self._graphs.copy_prompt(prompt, cache, more_than=max(more_than, n)))

    def _keep_prompt(self, ids: list[int], cache: KVCache) -> None:
        """Keeps `cache` (one sequence, its slots the keys and values of `ids`) as a kept prompt:
        a call's own cache, a stash, or a call's beams' prompt with their best beam's tokens where
        its row still held them (the next turn reuses the prompt whichever beam it continues)."""
        self._prompt_cache.keep(ids, cache, self.max_kept_prompts)

    def _stash(self, held: list[int], cache: KVCache) -> None:
        """Keeps a copy of the first len(held) slots of row 0 of `cache` (the keys and values of
        `held`) as a kept prompt: a one-sequence decode state's, before a call of another
        conversation overwrites them (a server's users, or an editor's files, that take turns each
        find their own), or the prompt of a call's samples (the next turn reuses it, whichever
        sample it continues). Nothing is copied where a kept prompt holds all of `held`
        already, nor where the memory for the copy is lacking; where a kept prompt whose tokens
        begin `held` has room for the rest (on the CPU: KVCache's `headroom`), only the rest's
        slots are copied, into it (a chat's samples: the dialog so far is kept, and their new
        message is added to it)."""
        if len(held) < prompt_cache.MIN_SHARED_TOKENS or self._prompt_cache.extends(held):
            return  # ``keep`` would not keep it, or need it: no copy to make
        roomy = self._prompt_cache.take_with_room(held)
        if roomy is not None:
            roomy.cache.widen(len(held))
            copy_slots(cache, roomy.cache, len(held), start=len(roomy.ids))
            self._keep_prompt(held, roomy.cache)
            return
        try:
            stash = KVCache(self.model.config, 1, len(held), self.dtype, self.device, grow=False, headroom=True)
        except OutOfMemoryError:
            return
        copy_slots(cache, stash, len(held))
        self._keep_prompt(held, stash)

    def _guidance(self, cfg: GenerationConfig, prompts: Sequence[Sequence[int]], per_prompt: int) -> Guidance | None:
        """Classifier-free guidance for the rows `prompts` (engine.guidance), or None; each prompt's
        `per_prompt` rows (its num_return_sequences, or its beams) come together. Negative
        prompts: one for every row, or one per prompt (repeated over its rows); without them, each
        row's last prompt token."""
        if cfg.guidance_scale in (None, 1.0):  # (negative prompts without it: refused by options.resolve)
            return None
        negative = cfg.negative_prompt_ids or [list(p[-1:]) for p in prompts]
        distinct = len(prompts) // per_prompt
        if cfg.negative_prompt_ids and len(negative) not in (1, distinct):
            raise ValueError(f"negative_prompt_ids has {len(negative)} prompts for {distinct} prompt{'s' * (distinct != 1)}: "
                             "give one, or one per prompt")
        for row in negative:
            arguments.check_ids_in_vocab("negative_prompt_ids", row, self.model.config.vocab_size)
        rows = [list(n) for n in negative for _ in range(len(prompts) // len(negative))]
        return Guidance(self.model, self._prefill, rows, cfg.guidance_scale, cfg.max_new_tokens, self.dtype, self.device)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        """The random draws of a call given ``seed`` (None: torch's global generator)."""
        if seed is None:
            return None
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return gen

    def _stop_ids(self, cfg: GenerationConfig, extra: Sequence[int] = (), prompt: Sequence[int] = ()) -> set[int]:
        """The ids that end a sequence: ``stop_token_ids`` and ``extra``; with ``stop_at_eos``, EOS,
        and ▁<EOT> when `prompt` is an infilling prompt (it holds ▁<MID>): the middle ends there,
        where transformers keeps generating (its issue #28150)."""
        ids = set(cfg.stop_token_ids) | set(extra)
        tok = self.tokenizer
        if cfg.stop_at_eos and tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        if cfg.stop_at_eos and tok.eot_id is not None and tok.middle_id in prompt:
            ids.add(tok.eot_id)
        return ids

    def _continuation_decoder(self, prompts: Sequence[Sequence[int]], healed: Sequence[Healed] | None = None) -> list[Callable[[list[int]], str]]:
        # A continuation keeps its leading space after a real prompt (prompt + text == full text);
        # after BOS alone the text starts like a fresh decode. A healed prompt's continuation
        # starts with the text of the token taken back, which is the original prompt's: cut off.
        native = self.tokenizer._native
        bos = self.tokenizer.bos_token_id
        out: list[Callable[[list[int]], str]] = []
        for k, p in enumerate(prompts):
            fresh = all(t == bos for t in p)
            decode: Callable[[list[int]], str] = (lambda ids: native.decode(ids, True)) if fresh else (lambda ids: native.decode_keep_space(ids, True))
            tail = healed[k].tail if healed is not None else None
            out.append(decode if tail is None else _cut_front(decode, len(decode([tail]))))
        return out

    def _heal(self, prompts: Sequence[Sequence[int]]) -> list[Healed]:
        """Token healing of each prompt (engine.token_healing)."""
        if self._piece_index is None or self._piece_index.native is not self.tokenizer._native:
            self._piece_index = PieceIndex(self.tokenizer._native)  # add_tokens makes a new native tokenizer
        return [self._piece_index.heal(p) for p in prompts]

    # ------------------------------------------------------------------ public API

    def encode_prompts(self, prompts: str | Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(t) for t in arguments.prompt_texts(prompts)]

    def generate(self, prompts: str | Sequence[str] | None = None, *, input_ids: Sequence[Sequence[int]] | None = None,
                 attention_mask: Sequence[Sequence[int]] | None = None, return_logprobs: bool = False, top_logprobs: int = 0,
                 output_scores: bool | None = False, output_logits: bool | None = False, **kwargs: Any) -> GenerationResult:
        """Generates a continuation of each prompt (a batch is left-padded and runs together).
        ``prompts``: text (a str or a list of str), or token ids as ``input_ids`` takes them (as
        transformers' ``generate(input_ids)``; ``inputs=`` is its keyword).

        Keyword arguments: ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_k``, ``top_p``,
        ``seed``, ``stop`` (strings), ``stop_token_ids``, ``stop_at_eos``, ``repetition_penalty``
        (transformers' rule, over the prompt and the generated tokens), ``min_new_tokens`` (no stop
        token before that many), ``num_return_sequences`` (samples per prompt, in prompt order),
        ``prompt_lookup_num_tokens`` (one prompt: guess that many tokens per step from the text
        so far, ``max_matching_ngram_size`` long matches; the output is unchanged),
        ``assistant_model`` (one prompt: a smaller `Engine` of the same vocabulary guesses up to
        ``num_assistant_tokens`` per step, stopping after one below ``assistant_confidence_threshold``;
        the output is unchanged), transformers' further sampling filters ``min_p``, ``typical_p``,
        ``epsilon_cutoff``, ``eta_cutoff`` and rules ``no_repeat_ngram_size``, ``bad_words_ids``,
        ``sequence_bias``, ``suppress_tokens``, ``begin_suppress_tokens``, the caller's
        ``prefix_allowed_tokens_fn`` and ``logits_processor`` (engine.logits_rules),
        beam search (``num_beams``, ``length_penalty``, ``early_stopping``; engine.beam_search),
        ``token_healing`` (the prompt's last token redone; engine.token_healing),
        and transformers' ``do_sample``, ``eos_token_id``, ``pad_token_id``, ``stop_strings``,
        ``max_length``/``min_length`` (the prompt included), ``use_cache``, ``stopping_criteria``
        (asked after each token; scores are None) and ``streamer`` (one sequence: transformers'
        TextStreamer / TextIteratorStreamer get each token as it comes).
        ``return_logprobs=True`` fills ``token_logprobs``: each generated token's log-probability
        under the model (with beams, each returned beam's; ``sequence_scores`` has their totals);
        ``top_logprobs=k`` (not with beams) also fills ``top_logprobs``: the k likeliest tokens
        at each position, with theirs.
        transformers' ``output_scores=True`` / ``output_logits=True`` fill ``scores`` / ``logits``
        (per step, [sequences, V] on the device; with beams [prompts × beams, V], and
        ``beam_indices``), and its ``return_dict_in_generate`` changes nothing (the result is
        always this object).
        """
        if not isinstance(return_logprobs, bool):
            raise TypeError(f"return_logprobs must be True or False, got {return_logprobs!r}")
        top_logprobs = arguments.check_int("top_logprobs", top_logprobs)
        if not 0 <= top_logprobs <= self.model.config.vocab_size:
            raise ValueError(f"top_logprobs must be between 0 and the vocabulary size ({self.model.config.vocab_size}), got {top_logprobs}")
        return_logprobs = return_logprobs or top_logprobs > 0
        output_scores, output_logits = (_flag(name, value) for name, value in (("output_scores", output_scores), ("output_logits", output_logits)))
        _flag("return_dict_in_generate", kwargs.pop("return_dict_in_generate", False))
        if "inputs" in kwargs:  # transformers' name for the first argument
            if prompts is not None:
                raise ValueError("give prompts or inputs (transformers' name), not both")
            prompts = kwargs.pop("inputs")
        if prompts is not None and not _is_text(prompts) and input_ids is None:
            prompts, input_ids = None, prompts  # token ids in the first place, as transformers' generate(input_ids)
        cfg = self._config(kwargs, many=True, heals=True)
        if (prompts is None) == (input_ids is None):
            raise ValueError("give either prompts (text) or input_ids, not both" if prompts is not None else "give prompts (text) or input_ids")
        if attention_mask is not None and input_ids is None:
            raise ValueError("attention_mask goes with input_ids; text prompts need none")
        ids = self.encode_prompts(prompts) if input_ids is None else arguments.prompt_id_lists(input_ids, attention_mask)
        stops = [self._stop_ids(cfg, prompt=p) for p in ids]
        healed = self._heal(ids) if cfg.token_healing else None
        allowed = None
        if healed is not None:
            ids, allowed = [h.prompt for h in healed], [h.allowed for h in healed]
        decoders = self._continuation_decoder(ids, healed)
        if cfg.num_beams > 1:
            return self._run_beams(ids, cfg, stops, decoders, return_logprobs, allowed, output_scores, output_logits, top_logprobs)
        n = cfg.num_return_sequences  # each prompt's samples together, as transformers
        ids, stops, decoders = [x for x in ids for _ in range(n)], [x for x in stops for _ in range(n)], [x for x in decoders for _ in range(n)]
        allowed = None if allowed is None else [x for x in allowed for _ in range(n)]
        return self._run(ids, cfg, stops, decoders, return_logprobs, top_logprobs, allowed, output_scores, output_logits)

    def stream(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[str]:
        """Yields text deltas of one prompt's continuation as tokens are generated. The deltas
        concatenate to ``generate(prompt).text``: text that could be the start of a stop string is
        held back until it is known not to be one."""
        cfg = self._config(kwargs, streams=True, heals=True)
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else arguments.token_id_list("prompt", prompt)
        stop_ids = self._stop_ids(cfg, prompt=ids)
        healed = self._heal([ids])[0] if cfg.token_healing else None
        if healed is not None:
            ids = healed.prompt
        fresh = all(t == self.tokenizer.bos_token_id for t in ids)
        decoder = self.tokenizer.stream_decoder(skip_special_tokens=True, keep_leading_space=not fresh)
        # a healed prompt's first token starts with the text of the token taken back: not new text
        skip = len(self._continuation_decoder([ids])[0]([healed.tail])) if healed is not None and healed.tail is not None else 0
        stops = cfg.stop
        text, emitted = "", 0
        stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_tokens": 0}
        deadline = Deadline(cfg.max_time)
        criteria = Criteria(cfg.stopping_criteria, [ids]) if cfg.stopping_criteria else None
        first_allowed = None if healed is None else [healed.allowed]
        for n, host in enumerate(self._steps([ids], cfg, stats, check_every=1, warn_stacklevel=4, stop_ids=stop_ids,
                                             first_allowed=first_allowed), start=1):
            if host[0] == NO_TOKEN:
                raise no_token_error(f"at generated token {n}")
            if host[0] in stop_ids:
                break
            delta = decoder.step(host[0])
            cut = min(skip, len(delta))
            text, skip = text + delta[cut:], skip - cut
            kept = cut_at_stop(text, stops)
            if len(kept) < len(text):
                yield kept[emitted:]
                return
            if criteria is not None and criteria.push(host)[0]:
                break  # the token it saw is kept
            if deadline.passed():
                break  # max_time: the token that found it out is kept
            safe = len(text) - partial_stop_len(text, stops)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        delta = decoder.flush()
        text = cut_at_stop(text + delta[min(skip, len(delta)):], stops)
        if len(text) > emitted:
            yield text[emitted:]

    def infill_prompt_ids(self, prefix: str, suffix: str, suffix_first: bool = False) -> list[int]:
        """Meta's infilling prompt (with BOS); generating from it stops at ``▁<EOT>``."""
        if not self.tokenizer.can_infill:
            raise InfillingUnsupported("this model's vocabulary has no infilling pieces (34B and Python variants cannot infill)")
        return self.tokenizer._native.encode_infill(prefix, suffix, bool(suffix_first), True)

    def infill(self, prefix: str | Sequence[str], suffix: str | Sequence[str], *, suffix_first: bool = False,
               **kwargs: Any) -> InfillResult | list[InfillResult]:
        """Fills the gap between ``prefix`` and ``suffix`` (Meta's format); generation stops at
        ``▁<EOT>``. Lists of prefixes and suffixes fill a batch together (one result each);
        ``num_return_sequences=n`` (sampling) gives n results per gap, gap by gap."""
        tok = self.tokenizer
        prefixes, suffixes = arguments.infill_pairs(prefix, suffix)
        cfg = self._config(kwargs, many=True)
        n = cfg.num_return_sequences
        prompts = [self.infill_prompt_ids(p, s, suffix_first) for p, s in zip(prefixes, suffixes)]
        pairs = [(p, s) for p, s in zip(prefixes, suffixes) for _ in range(n)]
        stops = self._stop_ids(cfg, [tok.eot_id])
        if cfg.num_beams > 1:
            result = self._run_beams(prompts, cfg, [stops] * len(prompts), [tok.decode_infilling] * len(prompts), False)
        else:
            ids = [i for i in prompts for _ in range(n)]  # each gap's samples together
            result = self._run(ids, cfg, stops, [tok.decode_infilling] * len(ids))
        out = [InfillResult(p, result.texts[k], s, result.row(k)) for k, (p, s) in enumerate(pairs)]
        return out if len(out) > 1 or not isinstance(prefix, str) else out[0]

    def fill(self, text: str | Sequence[str], **kwargs: Any) -> str | list[str]:
        """``text`` with one ``<FILL_ME>`` -> the generated middle only (like a pipeline's
        ``return_type=1``); a list of such texts fills a batch together (with
        ``num_return_sequences=n``, n middles per text, text by text)."""
        texts = [text] if isinstance(text, str) else arguments.prompt_texts(text)
        parts = []
        for k, t in enumerate(texts):
            count = t.count(FILL_MARKER)
            if count != 1:
                raise ValueError(f"text {k} contains {count} {FILL_MARKER} markers; infilling needs exactly one")
            prefix, _, suffix = t.partition(FILL_MARKER)
            parts.append((prefix, suffix))
        results = self.infill([p for p, _ in parts], [s for _, s in parts], **kwargs)
        middles = [r.middle for r in (results if isinstance(results, list) else [results])]
        return middles[0] if isinstance(text, str) and len(middles) == 1 else middles

    def score(self, texts: str | Sequence[str] | None = None, *, input_ids: Sequence[Sequence[int]] | None = None,
              attention_mask: Sequence[Sequence[int]] | None = None, top_logprobs: int = 0) -> ScoreResult:
        """The log-probability of each token of each text given the tokens before it (texts are
        encoded with BOS, which is context only), with each text's total ``logprob`` and
        ``perplexity``: for ranking candidate completions or measuring a model on code.
        ``top_logprobs=k`` adds the k tokens the model found likeliest at each position.

        >>> engine.score(["def add(a, b):\n    return a + b"]).perplexity   # doctest: +SKIP
        """
        if (texts is None) == (input_ids is None):
            raise ValueError("give either texts or input_ids, not both" if texts is not None else "give texts or input_ids")
        if attention_mask is not None and input_ids is None:
            raise ValueError("attention_mask goes with input_ids; texts need none")
        top_logprobs = arguments.check_int("top_logprobs", top_logprobs)
        if not 0 <= top_logprobs <= self.model.config.vocab_size:
            raise ValueError(f"top_logprobs must be between 0 and the vocabulary size ({self.model.config.vocab_size}), got {top_logprobs}")
        rows = self.encode_prompts(texts) if input_ids is None else arguments.prompt_id_lists(input_ids, attention_mask)
        with self._run_lock, self._on_device():
            return score_rows(self, rows, top_logprobs)

    def chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> str:
        """The assistant's next message for a Code Llama Instruct dialog. The next turn (these
        messages, the answer and a new message) prefills only what follows the tokens they share
        with this call's (``reuse_prompt_cache``)."""
        ids = self.tokenizer.chat_prompt_ids(messages)
        cfg = self._config(kwargs)
        decode = lambda new: self.tokenizer._native.decode(new, True)  # noqa: E731
        if cfg.num_beams > 1:
            return self._run_beams([ids], cfg, [self._stop_ids(cfg)], [decode], False).texts[0].strip()
        return self._run([ids], cfg, self._stop_ids(cfg), [decode]).texts[0].strip()

    def stream_chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> Iterator[str]:
        """Yields text deltas of the assistant's next message as it is generated; they concatenate
        to ``chat(messages)`` (its leading and trailing whitespace dropped as ``chat`` drops it).

        >>> for delta in engine.stream_chat([{"role": "user", "content": "Reverse a list"}]):  # doctest: +SKIP
        ...     print(delta, end="", flush=True)
        """
        if kwargs.get("token_healing"):
            self._config(kwargs)  # says why
        return stripped_deltas(self.stream(self.tokenizer.chat_prompt_ids(messages), **kwargs))
