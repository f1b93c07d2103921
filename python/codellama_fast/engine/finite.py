"""Non-finite logits: a float16 model whose activations overflow (or weights that hold NaN/inf)
gives NaN or inf logits, and every token chosen from them is meaningless (greedy decoding picks id
0 again and again). The engine notes this on the device as it goes, with no host sync of its own,
and reads the note where it reads the chosen tokens anyway; then it raises
``NonFiniteLogitsError`` instead of returning such tokens. Likewise a choice the logits rules
leave without any token comes back as ``NO_TOKEN``, and the caller raises ``NoTokenAllowedError``
(``no_token_error``) when it reads one for a sequence still going."""

from __future__ import annotations

import math

import torch

from ..errors import NonFiniteLogitsError, NoTokenAllowedError

# the id a choice reports for a sequence the logits rules left no token (see no_token_error)
NO_TOKEN = -1


class FiniteWatch:
    """A device value [] fp32: 0 while every logits it saw were finite, NaN once any held NaN or
    inf. ``see`` works in place, so it can sit inside a captured CUDA graph."""

    def __init__(self, device: torch.device) -> None:
        self.flag = torch.zeros((), dtype=torch.float32, device=device)

    def see(self, logits: torch.Tensor) -> None:
        """logits [..., V]: the ones a choice is made from (padding positions excluded)."""
        # sum * 0 is 0 for finite logits and NaN as soon as one is NaN or inf (NaN and inf carry
        # through the sum; inf * 0 is NaN): one reduction, about 20x cheaper on a CPU than
        # isfinite().all(). A finite sum cannot overflow fp32 short of logits near 1e34.
        self.flag.add_(logits.sum().mul_(0.0))

    def all_finite(self) -> torch.Tensor:
        """[] bool on the device, for decisions that stay there (no host read)."""
        return torch.isfinite(self.flag)

    def reset(self) -> None:
        self.flag.zero_()

    def check(self, dtype: torch.dtype, where: str) -> None:
        """Raises if any logits seen so far were not finite (one host read of the flag)."""
        if not math.isfinite(self.flag.item()):
            raise nonfinite_error(dtype, where)


def nonfinite_error(dtype: torch.dtype, where: str) -> NonFiniteLogitsError:
    if dtype == torch.float16:
        hint = ("float16 activations overflowed, or the weights hold NaN/inf; load the model with dtype='bfloat16' "
                "(the same speed on a recent GPU) or 'float32'")
    else:
        hint = f"the model's weights (or its {str(dtype).split('.')[-1]} activations) hold NaN or inf"
    return NonFiniteLogitsError(f"the model's logits are NaN or inf {where}: {hint}")


def no_token_error(where: str) -> NoTokenAllowedError:
    """For a sequence still going whose choice was NO_TOKEN: every id banned at that step (greedy
    decoding would return id 0 there, sampling a NaN draw). One that has ended is not asked."""
    return NoTokenAllowedError(f"the logits rules left no token to choose {where}: together, the call's bad_words_ids, "
                               "suppress_tokens, begin_suppress_tokens, min_new_tokens, forced_eos_token_id, "
                               "prefix_allowed_tokens_fn or logits_processor ban every id there")
