"""Non-finite logits: a float16 model whose activations overflow (or weights that hold NaN/inf)
gives NaN or inf logits, and every token chosen from them is meaningless (greedy decoding picks id
0 again and again). The engine notes this on the device as it goes, with no host sync of its own,
and reads the note where it reads the chosen tokens anyway; then it raises
``NonFiniteLogitsError`` instead of returning such tokens."""

from __future__ import annotations

import torch

from ..errors import NonFiniteLogitsError


class FiniteWatch:
    """A device flag [] bool set once any logits it saw held NaN or inf. ``see`` works in place, so
    it can sit inside a captured CUDA graph."""

    def __init__(self, device: torch.device) -> None:
        self.flag = torch.zeros((), dtype=torch.bool, device=device)

    def see(self, logits: torch.Tensor) -> None:
        """logits [..., V]: the ones a choice is made from (padding positions excluded)."""
        # Under inference mode whatever the caller's state: a generator resumed after another one
        # left inference mode may hold a flag made inside it, which only inference mode may update.
        with torch.inference_mode():
            self.flag.logical_or_(~torch.isfinite(logits).all())

    def reset(self) -> None:
        with torch.inference_mode():
            self.flag.zero_()

    def check(self, dtype: torch.dtype, where: str) -> None:
        """Raises if any logits seen so far were not finite (one host read of the flag)."""
        if bool(self.flag):
            raise nonfinite_error(dtype, where)


def nonfinite_error(dtype: torch.dtype, where: str) -> NonFiniteLogitsError:
    if dtype == torch.float16:
        hint = ("float16 activations overflowed, or the weights hold NaN/inf; load the model with dtype='bfloat16' "
                "(the same speed on a recent GPU) or 'float32'")
    else:
        hint = f"the model's weights (or its {str(dtype).split('.')[-1]} activations) hold NaN or inf"
    return NonFiniteLogitsError(f"the model's logits are NaN or inf {where}: {hint}")
