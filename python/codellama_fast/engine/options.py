"""Generation options: the settings of one call (names as in transformers' ``generate``) over the
model's defaults, with transformers' aliases read (``do_sample``, ``eos_token_id``,
``pad_token_id``, ``stop_strings``, ``max_length``/``min_length``, ``use_cache``) and every value
checked before any work starts."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from typing import Any

from . import arguments
from .params import SamplingParams, TokenRules

# transformers' GenerationConfig defaults for sampling settings nobody set
HF_TEMPERATURE, HF_TOP_K, HF_TOP_P = 1.0, 50, 1.0


@dataclass
class GenerationConfig:
    """Generation settings (names follow transformers' ``generate``). ``temperature=0`` is greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    stop_at_eos: bool = True
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    num_return_sequences: int = 1
    # more of transformers' sampling filters (after top_k and top_p, in this order)
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    # transformers' logits processors (engine.logits_rules)
    no_repeat_ngram_size: int = 0
    # the prompt-grounded rules transformers names after an encoder's input, which for a model like
    # this one is the prompt: prompt tokens' logits made likelier (> 1) or less likely (< 1) by the
    # inverse of repetition_penalty's rule; no n-gram of this size from the prompt completed again
    encoder_repetition_penalty: float = 1.0
    encoder_no_repeat_ngram_size: int = 0
    bad_words_ids: Sequence[Sequence[int]] | None = None
    sequence_bias: Any = None
    suppress_tokens: Sequence[int] | None = None
    begin_suppress_tokens: Sequence[int] | None = None
    # the last token a sequence may get is one of these (transformers' ForcedEOSTokenLogitsProcessor)
    forced_eos_token_id: Any = None
    # (start, factor): from the start-th new token on, the stop ids' logits grow by |logit| ×
    # (factor ** (tokens past start) - 1), so sequences end sooner (ExponentialDecayLengthPenalty)
    exponential_decay_length_penalty: Any = None
    # the scores after every rule made log-probabilities again (transformers' LogitNormalization):
    # beam scores and output_scores change, a plain choice does not
    renormalize_logits: bool = False
    # classifier-free guidance (engine.guidance): scale > 1 pushes each step away from what the
    # model gives after the negative prompt (one token list for all prompts, or one per prompt;
    # transformers' negative_prompt_attention_mask marks a padded batch's real tokens), or, with
    # none, after the prompt's last token alone
    guidance_scale: float | None = None
    negative_prompt_ids: Any = None
    negative_prompt_attention_mask: Any = None
    # transformers' total lengths (prompt included, the longest prompt of a batch):
    # max_length sets max_new_tokens when the call does not, min_length sets min_new_tokens
    max_length: int | None = None
    min_length: int | None = None
    # transformers' streamer protocol (TextStreamer, TextIteratorStreamer): put(ids) then end()
    streamer: Any = None
    # seconds after which generation stops, after the token being made (the prompt's run
    # included, as transformers' max_time); checked where the host reads tokens: on the captured
    # decode step, once per block of tokens
    max_time: float | None = None
    # transformers' stopping criteria: callables (input_ids [B, T], scores) -> bool or bool [B],
    # asked after each token; scores is None here (the engine keeps no per-step scores)
    stopping_criteria: Any = None
    # the caller's own rules (engine.logits_rules.TokenRules)
    prefix_allowed_tokens_fn: Any = None
    logits_processor: Any = None
    # beam search (engine.beam_search), transformers' names and defaults
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    # prompt-lookup decoding (engine.prompt_lookup): guesses per step, and the longest n-gram matched
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int = 2
    # assisted decoding (engine.assisted): a smaller Engine of the same vocabulary guesses up to
    # num_assistant_tokens per step, stopping after a token it gives less than the threshold
    # (transformers' defaults)
    assistant_model: Any = None
    num_assistant_tokens: int = 20
    assistant_confidence_threshold: float = 0.4
    # "constant", or transformers' "heuristic" (+2 guesses after a step that kept them all, -1
    # otherwise, carried to the assistant's next call) and "heuristic_transient" (not carried)
    num_assistant_tokens_schedule: str = "constant"
    # token healing (engine.token_healing): the prompt's last token taken back and the first
    # generated token limited to the pieces that extend it (generate and stream only)
    token_healing: bool = False

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p, self.epsilon_cutoff, self.eta_cutoff)

    def rules(self, held_back: Sequence[int] = ()) -> TokenRules:
        """The per-step rules; ``held_back``: the stop ids min_new_tokens holds back."""
        return TokenRules(self.repetition_penalty, self.no_repeat_ngram_size, tuple(self.sequence_bias or ()),
                          tuple(tuple(s) for s in self.bad_words_ids or ()), tuple(self.suppress_tokens or ()),
                          tuple(self.begin_suppress_tokens or ()), self.min_new_tokens,
                          tuple(held_back) if self.min_new_tokens else (), self.prefix_allowed_tokens_fn,
                          tuple(self.logits_processor or ()),
                          forced_eos=tuple(self.forced_eos_token_id or ()), forced_eos_at=self.max_new_tokens - 1,
                          length_decay=self.exponential_decay_length_penalty, decay_ids=tuple(held_back),
                          encoder_repetition_penalty=self.encoder_repetition_penalty,
                          encoder_no_repeat_ngram_size=self.encoder_no_repeat_ngram_size)

    def for_prompt_length(self, t: int) -> GenerationConfig:
        """The settings for prompts padded to ``t`` tokens: transformers' ``max_length`` and
        ``min_length`` (prompt included) turned into new-token counts."""
        if self.max_length is None and self.min_length is None:
            return self
        cfg = replace(self, max_length=None, min_length=None)
        if self.max_length is not None:
            if t >= self.max_length:
                raise ValueError(f"the prompt has {t} tokens but max_length is {self.max_length}: max_length counts the prompt "
                                 f"too (as in transformers); raise it, or give max_new_tokens")
            cfg.max_new_tokens = self.max_length - t
        if self.min_length is not None:
            cfg.min_new_tokens = max(cfg.min_new_tokens, self.min_length - t)
        return cfg


def resolve(defaults: Mapping[str, Any], overrides: Mapping[str, Any], many: bool = False, streams: bool = False) -> GenerationConfig:
    """The checked settings of a call. `defaults`: the model's (generation_config.json); `many`:
    the call may return several sequences per prompt (generate); `streams`: it yields text as it
    goes (stream)."""
    overrides = _read_generation_config(defaults, dict(overrides))
    overrides = _read_do_sample(defaults, _read_hf_aliases(_read_hf_token_ids(_drop_inert(overrides))))
    if not many and arguments.check_int("num_return_sequences", overrides.get("num_return_sequences", 1)) != 1:
        raise ValueError("num_return_sequences is for generate(); stream, infill and chat return one continuation")
    refused = set(overrides) - set(GenerationConfig.__dataclass_fields__)
    if refused:
        raise TypeError(_refusal(refused, overrides))
    cfg = GenerationConfig(**{**defaults, **overrides})
    cfg.max_new_tokens = _at_least("max_new_tokens", arguments.check_int("max_new_tokens", cfg.max_new_tokens), 0)
    cfg.temperature = arguments.check_real("temperature", cfg.temperature)
    top_k = arguments.check_int("top_k", cfg.top_k, optional=True)
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 filters nothing, as in transformers), got {top_k}")
    cfg.top_k = top_k or None
    cfg.top_p = arguments.check_real("top_p", cfg.top_p, optional=True)
    for name in ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"):
        setattr(cfg, name, arguments.check_real(name, getattr(cfg, name), optional=True))
    cfg.seed = arguments.check_int("seed", cfg.seed, optional=True)
    if cfg.seed is not None and not -(2**63) <= cfg.seed < 2**64:  # torch.Generator's seeds (a negative one wraps)
        raise ValueError(f"seed must be between -2**63 and 2**64 - 1, got {cfg.seed}")
    cfg.stop = arguments.stop_strings(cfg.stop)
    cfg.stop_token_ids = arguments.stop_ids(cfg.stop_token_ids)
    if not isinstance(cfg.stop_at_eos, bool):
        raise TypeError(f"stop_at_eos must be a bool, got {type(cfg.stop_at_eos).__name__}")
    for name in ("token_healing", "renormalize_logits"):
        if not isinstance(getattr(cfg, name), bool):
            raise TypeError(f"{name} must be a bool, got {type(getattr(cfg, name)).__name__}")
    params = cfg.sampling()  # value checks (temperature >= 0, top_k >= 1, 0 < top_p <= 1)
    cfg.num_return_sequences = _at_least("num_return_sequences", arguments.check_int("num_return_sequences", cfg.num_return_sequences), 1)
    cfg.num_beams = _at_least("num_beams", arguments.check_int("num_beams", cfg.num_beams), 1)
    cfg.length_penalty = arguments.check_real("length_penalty", cfg.length_penalty)
    if not isinstance(cfg.early_stopping, (bool, str)) or cfg.early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never' (as in transformers), got {cfg.early_stopping!r}")
    if cfg.num_return_sequences > 1 and params.greedy and cfg.num_beams == 1:
        raise ValueError("num_return_sequences > 1 needs sampling (a temperature > 0) or beam search (num_beams > 1): "
                         "greedy decoding returns one continuation")
    cfg.min_new_tokens = _at_least("min_new_tokens", arguments.check_int("min_new_tokens", cfg.min_new_tokens), 0)
    cfg.prompt_lookup_num_tokens = arguments.check_int("prompt_lookup_num_tokens", cfg.prompt_lookup_num_tokens, optional=True)
    if cfg.prompt_lookup_num_tokens is not None:
        _at_least("prompt_lookup_num_tokens", cfg.prompt_lookup_num_tokens, 1)
    cfg.max_matching_ngram_size = _at_least("max_matching_ngram_size", arguments.check_int("max_matching_ngram_size", cfg.max_matching_ngram_size), 1)
    cfg.num_assistant_tokens = _at_least("num_assistant_tokens", arguments.check_int("num_assistant_tokens", cfg.num_assistant_tokens), 1)
    if cfg.num_assistant_tokens_schedule not in ("constant", "heuristic", "heuristic_transient"):
        raise ValueError(f"num_assistant_tokens_schedule must be 'constant', 'heuristic' or 'heuristic_transient', "
                         f"got {cfg.num_assistant_tokens_schedule!r}")
    cfg.assistant_confidence_threshold = arguments.check_real("assistant_confidence_threshold", cfg.assistant_confidence_threshold)
    if not 0.0 <= cfg.assistant_confidence_threshold <= 1.0:
        raise ValueError(f"assistant_confidence_threshold must be in [0, 1] (0 never stops early), got {cfg.assistant_confidence_threshold}")
    if cfg.assistant_model is not None and cfg.prompt_lookup_num_tokens is not None:
        raise ValueError("give prompt_lookup_num_tokens or assistant_model, not both: each guesses the next tokens")
    cfg.repetition_penalty = arguments.check_real("repetition_penalty", cfg.repetition_penalty)
    if cfg.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 is none), got {cfg.repetition_penalty}")
    cfg.encoder_repetition_penalty = arguments.check_real("encoder_repetition_penalty", cfg.encoder_repetition_penalty)
    if cfg.encoder_repetition_penalty <= 0:
        raise ValueError(f"encoder_repetition_penalty must be > 0 (1.0 is none; > 1 favours the prompt's tokens), "
                         f"got {cfg.encoder_repetition_penalty}")
    for name in ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size"):
        value = getattr(cfg, name)
        setattr(cfg, name, _at_least(name, arguments.check_int(name, 0 if value is None else value), 0))
    if cfg.bad_words_ids is not None:
        cfg.bad_words_ids = arguments.token_sequences("bad_words_ids", cfg.bad_words_ids)
    if cfg.sequence_bias is not None:
        cfg.sequence_bias = arguments.sequence_biases(cfg.sequence_bias)
    for name in ("suppress_tokens", "begin_suppress_tokens", "forced_eos_token_id"):
        if getattr(cfg, name) is not None:
            setattr(cfg, name, tuple(arguments.stop_ids(getattr(cfg, name), name)))
    if cfg.exponential_decay_length_penalty is not None:
        cfg.exponential_decay_length_penalty = _length_decay(cfg.exponential_decay_length_penalty)
    if cfg.streamer is not None and not (callable(getattr(cfg.streamer, "put", None)) and callable(getattr(cfg.streamer, "end", None))):
        raise TypeError(f"streamer must have put(token_ids) and end() (transformers' TextStreamer, TextIteratorStreamer), "
                        f"got {type(cfg.streamer).__name__}")
    if cfg.streamer is not None and streams:
        raise ValueError("stream() yields the text itself; streamer is for generate(), infill() and chat()")
    cfg.guidance_scale = arguments.check_real("guidance_scale", cfg.guidance_scale, optional=True)
    if cfg.guidance_scale is not None and not abs(cfg.guidance_scale) < float("inf"):
        raise ValueError(f"guidance_scale must be finite (1 is none), got {cfg.guidance_scale}")
    if cfg.negative_prompt_ids is not None:
        cfg.negative_prompt_ids = arguments.prompt_id_lists(cfg.negative_prompt_ids, cfg.negative_prompt_attention_mask,
                                                            ("negative_prompt_ids", "negative_prompt_attention_mask"))
        if any(not n for n in cfg.negative_prompt_ids):
            raise ValueError("negative_prompt_ids needs at least one token in each negative prompt")
        cfg.negative_prompt_attention_mask = None  # read into the lists
        if cfg.guidance_scale in (None, 1.0):
            raise ValueError("negative_prompt_ids needs guidance_scale (transformers' classifier-free guidance; 1 is none)")
    elif cfg.negative_prompt_attention_mask is not None:
        raise ValueError("negative_prompt_attention_mask goes with negative_prompt_ids")
    cfg.max_time = arguments.check_real("max_time", cfg.max_time, optional=True)
    if cfg.max_time is not None and not (cfg.max_time > 0 and cfg.max_time != float("inf")):
        raise ValueError(f"max_time must be a finite number of seconds > 0, got {cfg.max_time}")
    if cfg.stopping_criteria is not None:
        cfg.stopping_criteria = _callables("stopping_criteria", cfg.stopping_criteria,
                                           "a callable (input_ids, scores) -> bool or a list of them (transformers' StoppingCriteriaList)")
    if cfg.prefix_allowed_tokens_fn is not None and not callable(cfg.prefix_allowed_tokens_fn):
        raise TypeError(f"prefix_allowed_tokens_fn must be a function (batch_id, input_ids) -> allowed ids, "
                        f"got {type(cfg.prefix_allowed_tokens_fn).__name__}")
    if cfg.logits_processor is not None:
        cfg.logits_processor = _callables("logits_processor", cfg.logits_processor,
                                          "a callable (input_ids, scores) -> scores or a list of them (transformers' LogitsProcessorList)")
    for name in ("max_length", "min_length"):
        value = arguments.check_int(name, getattr(cfg, name), optional=True)
        setattr(cfg, name, value if value is None else _at_least(name, value, 1 if name == "max_length" else 0))
    if cfg.num_beams > 1:  # after the values' own checks: it reads them
        _check_beams(cfg, streams)
    return cfg


def _length_decay(value: Any) -> tuple[int, float]:
    """transformers' exponential_decay_length_penalty: (start_index, decay_factor)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"exponential_decay_length_penalty must be a pair (start_index, decay_factor), got {value!r}")
    start = _at_least("exponential_decay_length_penalty's start_index", arguments.check_int("exponential_decay_length_penalty's start_index",
                                                                                             value[0]), 0)
    factor = arguments.check_real("exponential_decay_length_penalty's decay_factor", value[1])
    if not factor > 0 or factor == float("inf"):
        raise ValueError(f"exponential_decay_length_penalty's decay_factor must be finite and > 0 (above 1 ends sequences "
                         f"sooner), got {factor}")
    return start, factor


def _callables(name: str, value: Any, what: str) -> tuple[Any, ...]:
    """One callable or a list of them (transformers' *List classes are lists) -> a tuple."""
    items = [value] if callable(value) and not isinstance(value, (list, tuple)) else value
    if not isinstance(items, (list, tuple)) or not all(callable(p) for p in items):
        raise TypeError(f"{name} must be {what}")
    return tuple(items)


def _check_beams(cfg: GenerationConfig, streams: bool) -> None:
    """What beam search does not combine with, said before any work."""
    if streams:
        raise ValueError(f"num_beams={cfg.num_beams}: beam search knows the best sequence only at the end, so it does not "
                         "stream; use generate(), infill() or chat()")
    if cfg.prompt_lookup_num_tokens is not None or cfg.assistant_model is not None:
        raise ValueError("num_beams does not combine with prompt_lookup_num_tokens or assistant_model")
    if cfg.streamer is not None:
        raise ValueError("streamer cannot be used with beam search (as in transformers): the best beam is known only at the end")
    if cfg.num_return_sequences > cfg.num_beams:
        raise ValueError(f"num_return_sequences ({cfg.num_return_sequences}) must be <= num_beams ({cfg.num_beams}): "
                         "beam search returns its best finished beams")


def logits_rules_for(cfg: GenerationConfig, stop_ids: set[int], vocab: int, stacklevel: int = 2) -> TokenRules:
    """The call's per-step rules for a model of ``vocab`` ids that stops at ``stop_ids``. As in
    transformers, a one-token bad word that is a stop id is dropped (it would forbid ending),
    with a warning: min_new_tokens holds stop ids back for a while."""
    for name in ("suppress_tokens", "begin_suppress_tokens"):
        arguments.check_ids_in_vocab(name, getattr(cfg, name) or (), vocab)
    arguments.check_ids_in_vocab("forced_eos_token_id", cfg.forced_eos_token_id or (), vocab)
    for name, seqs in (("bad_words_ids", cfg.bad_words_ids or ()), ("sequence_bias", [s for s, _ in cfg.sequence_bias or ()])):
        for seq in seqs:
            arguments.check_ids_in_vocab(name, seq, vocab)
    if cfg.bad_words_ids:
        kept = tuple(s for s in cfg.bad_words_ids if not (len(s) == 1 and s[0] in stop_ids))
        if len(kept) < len(cfg.bad_words_ids):
            warnings.warn("bad_words_ids holds a stop id alone; it is ignored (as in transformers), so generation can still "
                          "end: use min_new_tokens to hold stop ids back, or stop_at_eos=False", UserWarning, stacklevel=stacklevel)
            cfg = replace(cfg, bad_words_ids=kept)
    return cfg.rules(sorted(i for i in stop_ids if 0 <= i < vocab))


def _at_least(name: str, value: Any, low: int) -> int:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


_OTHER_TOKENIZER = "an assistant with another tokenizer is not provided; assistant_model must share this model's vocabulary"
# transformers arguments this engine does not take, and what to use instead
HF_HINTS = {
    "num_beam_groups": "diverse beam search is not provided; num_beams gives plain beam search",
    "diversity_penalty": "diverse beam search is not provided; num_beams gives plain beam search",
    "constraints": "constrained beam search is not provided; prefix_allowed_tokens_fn limits each step's choice",
    "force_words_ids": "constrained beam search is not provided; prefix_allowed_tokens_fn limits each step's choice",
    "penalty_alpha": "contrastive search is not provided; repetition_penalty or no_repeat_ngram_size discourage repeats",
    "dola_layers": "DoLa decoding is not provided",
    "output_scores": "only generate() returns each step's scores",
    "output_logits": "only generate() returns each step's logits; engine.score(texts) scores finished texts",
    "return_dict_in_generate": "only generate() takes it (it always returns a GenerationResult)",
    "cache_implementation": "the KV cache is preallocated in the model's dtype; 'static' and 'dynamic' are accepted and change nothing",
    "assistant_early_exit": "self-speculative decoding (a model's own early layers as assistant) is not provided; "
                            "assistant_model (a smaller model) or prompt_lookup_num_tokens guess tokens",
    "assistant_lookbehind": _OTHER_TOKENIZER,
    "target_lookbehind": _OTHER_TOKENIZER,
    "forced_bos_token_id": "it serves encoder-decoder models (transformers forces it only while the sequence is one token); "
                           "prefix_allowed_tokens_fn limits any step's choice",
    "low_memory": "sequential beam search is not provided; the beams of a prompt run as one batch",
    "output_attentions": "attention weights are not returned: the attention kernels never form them",
    "output_hidden_states": "hidden states are not returned",
    "prefill_chunk_size": "the engine chunks long prompts itself: set engine.prefill_chunk_tokens "
                          "(tokens per chunk, batch × length)",
    "remove_invalid_values": "NaN or inf logits raise NonFiniteLogitsError here, naming the dtype to load instead, "
                             "rather than being replaced",
    "watermarking_config": "watermarking is not provided",
}


def _refusal(names: set[str], given: Mapping[str, Any]) -> str:
    """The message for the arguments a call gave that this engine does not take: transformers'
    own names (HF_HINTS, HF_INERT) with the value given and what to use instead, then any other
    name as unknown."""
    known = sorted(n for n in names if n in HF_HINTS or n in HF_INERT)
    other = sorted(names - set(known))
    lines = []
    if known:
        values = ", ".join(f"{n}={given[n]!r}" for n in known)
        lines.append(f"transformers generation arguments this engine does not take at these values: {values}")
        lines += [f"  {n}: {HF_HINTS[n]}" for n in known if n in HF_HINTS]
    if other:
        lines.append(f"unknown generation arguments: {', '.join(other)}")
    return "\n".join(lines)


# transformers GenerationConfig fields this engine does not take, at the values (its defaults) where
# they change nothing: accepted, so that a whole transformers config (**config.to_dict()) can be
# passed; any other value is refused (HF_HINTS says what to use instead)
HF_INERT: dict[str, tuple[Any, ...]] = {
    "assistant_early_exit": (None,), "assistant_lookbehind": (10,), "constraints": (None,), "diversity_penalty": (0.0,),
    "dola_layers": (None,), "force_words_ids": (None,), "forced_bos_token_id": (None,), "low_memory": (None, False),
    "num_beam_groups": (1,), "output_attentions": (False,), "output_hidden_states": (False,), "output_logits": (None, False),
    "output_scores": (False,), "penalty_alpha": (None,), "prefill_chunk_size": (None,), "remove_invalid_values": (False,),
    "return_dict_in_generate": (False,), "target_lookbehind": (10,),
    "watermarking_config": (None,), "cache_implementation": (None, "static", "dynamic"),
}
# transformers' bookkeeping and compile/cache-format switches: nothing to do here whatever their value
HF_BOOKKEEPING = ("_from_model_config", "transformers_version", "bos_token_id", "decoder_start_token_id", "is_assistant",
                  "cache_config", "disable_compile", "compile_config", "return_legacy_cache")
HF_DEFAULT_MAX_LENGTH, HF_DEFAULT_MIN_LENGTH = 20, 0


def _read_generation_config(defaults: Mapping[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``generation_config=``: a transformers ``GenerationConfig`` (or this package's),
    whose fields the call's own keyword arguments override. As transformers reads it, a field left
    at its class default is not set: the model's generation_config.json (or the engine's default)
    applies there. One exception keeps transformers' meaning: when neither the given config nor
    the model sets ``max_new_tokens`` and ``max_length`` is left at its default (20), transformers
    generates 20 new tokens, and so does this."""
    given = overrides.pop("generation_config", None)
    if given is None:
        return overrides
    if isinstance(given, GenerationConfig):
        fields = {f.name: getattr(given, f.name) for f in dataclass_fields(given)}
        class_defaults = GenerationConfig()
        base = {f.name: getattr(class_defaults, f.name) for f in dataclass_fields(GenerationConfig)}
    elif callable(getattr(given, "to_dict", None)) and type(given).__name__ == "GenerationConfig":
        fields, base = given.to_dict(), type(given)().to_dict()
    else:
        raise TypeError(f"generation_config must be a transformers GenerationConfig (or codellama_fast's), got {type(given).__name__}")
    taken = {}
    for key, value in fields.items():
        unset = key in base and type(value) is type(base[key]) and value == base[key]
        if (unset and key == "max_length" and fields.get("max_new_tokens") is None and "max_new_tokens" not in defaults
                and "max_new_tokens" not in overrides and "max_length" not in overrides):
            taken["max_new_tokens"] = value
        elif not unset and not key.startswith("_"):
            taken[key] = value
    return {**taken, **overrides}


def _drop_inert(overrides: dict[str, Any]) -> dict[str, Any]:
    """Drops transformers' fields that change nothing here (see HF_INERT, HF_BOOKKEEPING) and
    None for our fields that have a value by default (transformers' "unset")."""
    out = {}
    fields = GenerationConfig.__dataclass_fields__
    for key, value in overrides.items():
        # the type first: `value == v` on a tensor would be a tensor, not a bool
        if key in HF_BOOKKEEPING or (key in HF_INERT and any(value is v or (v is not None and type(value) is type(v) and value == v)
                                                             for v in HF_INERT[key])):
            continue
        if value is None and key in fields and fields[key].default is not None:
            continue
        out[key] = value
    return out


def _read_hf_aliases(overrides: dict[str, Any]) -> dict[str, Any]:
    """transformers names with one meaning here: ``stop_strings`` is ``stop`` (its ``tokenizer``
    argument is not needed: the engine decodes with its own); ``max_length`` gives way to
    ``max_new_tokens`` when both are given, with a warning, as there; ``use_cache`` changes
    nothing here (every step uses the KV cache)."""
    if "stop_strings" in overrides:
        if "stop" in overrides:
            raise ValueError("give stop (or transformers' stop_strings), not both")
        value = overrides.pop("stop_strings")
        overrides["stop"] = () if value is None else value
    overrides.pop("tokenizer", None)
    if "use_cache" in overrides and not isinstance(overrides.pop("use_cache"), bool):
        raise TypeError("use_cache must be a bool (every step here uses the KV cache either way)")
    if "num_beams" in overrides and overrides["num_beams"] is None:
        del overrides["num_beams"]
    for name, low in (("max_length", 1), ("min_length", 0)):
        if overrides.get(name) is not None:
            _at_least(name, arguments.check_int(name, overrides[name]), low)
    # max_new_tokens wins over max_length (and min_new_tokens over min_length); as in transformers,
    # said only when the length was not left at transformers' default
    if overrides.get("max_length") is not None and overrides.get("max_new_tokens") is not None:
        if overrides["max_length"] != HF_DEFAULT_MAX_LENGTH:
            warnings.warn(f"both max_new_tokens ({overrides['max_new_tokens']}) and max_length ({overrides['max_length']}) are set: "
                          "max_new_tokens takes precedence", UserWarning, stacklevel=5)
        del overrides["max_length"]
    if overrides.get("min_length") is not None and overrides.get("min_new_tokens") is not None:
        if overrides["min_length"] != HF_DEFAULT_MIN_LENGTH:
            warnings.warn(f"both min_new_tokens ({overrides['min_new_tokens']}) and min_length ({overrides['min_length']}) are set: "
                          "min_new_tokens takes precedence", UserWarning, stacklevel=5)
        del overrides["min_length"]
    return overrides


def _read_hf_token_ids(overrides: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``eos_token_id`` (an id, a list, or None for no end token) replaces the
    tokenizer's EOS as the stop ids; ``pad_token_id`` is accepted and unused (the engine pads a
    batch itself and never shows the padding)."""
    if "pad_token_id" in overrides:
        pad = overrides.pop("pad_token_id")
        if pad is not None:
            arguments.check_int("pad_token_id", pad)
    if "eos_token_id" in overrides:
        eos = overrides.pop("eos_token_id")
        if "stop_token_ids" in overrides or "stop_at_eos" in overrides:
            raise ValueError("give eos_token_id (transformers' name) or stop_token_ids/stop_at_eos, not both")
        overrides["stop_at_eos"] = False
        overrides["stop_token_ids"] = () if eos is None else arguments.stop_ids(eos, "eos_token_id")
    return overrides


def _read_do_sample(defaults: Mapping[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``do_sample``: False is greedy whatever the temperature; True samples with
    transformers' defaults (temperature 1.0, top_k 50) for what neither the call nor the model's
    generation_config sets."""
    if "do_sample" not in overrides:
        return overrides
    do_sample = overrides.pop("do_sample")
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__} {do_sample!r}")
    if do_sample:
        if "temperature" not in overrides and not defaults.get("temperature"):
            overrides["temperature"] = HF_TEMPERATURE
        if "top_k" not in overrides and "top_k" not in defaults:
            overrides["top_k"] = HF_TOP_K
        if overrides.get("temperature", defaults.get("temperature")) == 0:
            raise ValueError("do_sample=True needs a temperature > 0 (temperature=0 is greedy)")
    else:
        if overrides.get("temperature") not in (None, 0, 0.0, HF_TEMPERATURE):  # transformers' default is not "set"
            # stack: the caller's generate/stream -> Engine._config -> resolve -> here
            warnings.warn(f"do_sample=False is greedy, so temperature={overrides['temperature']} is not used", UserWarning, stacklevel=5)
        overrides["temperature"] = 0.0
    return overrides
