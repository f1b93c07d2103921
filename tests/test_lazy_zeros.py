"""Lazily zeroed CPU tensors (engine/lazy_zeros.py): the same values as ``torch.zeros``, pages
resident only once written, and the memory returned when the last view goes; a large KV cache
on the CPU takes them."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")

from codellama_fast.engine import lazy_zeros  # noqa: E402

MIB = 2**20
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident memory is read from /proc/self/statm")


def _resident() -> int:
    """This process's resident bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 4, 1 << 20, 4), (3, 5, 7), (1 << 24,)])  # 32-128 MiB; tiny (torch.zeros); 32-64 MiB
def test_equals_torch_zeros(dtype, shape):
    got = lazy_zeros.zeros(shape, dtype, torch.device("cpu"))
    want = lazy_zeros.reference_zeros(shape, dtype, torch.device("cpu"))
    assert got.shape == want.shape and got.dtype == want.dtype and got.stride() == want.stride()
    assert torch.equal(got, want)
    got.view(-1)[-1] = 3.0  # writable, and its own memory
    again = lazy_zeros.zeros(shape, dtype, torch.device("cpu"))
    assert got.view(-1)[-1].item() == 3.0 and not again.any()


@on_linux
def test_only_written_pages_are_resident_and_all_go_with_the_last_view():
    before = _resident()
    x = lazy_zeros.zeros((4, 64 * MIB // 16), torch.float32, torch.device("cpu"))  # 64 MiB, rows of 16 MiB
    assert _resident() - before < 4 * MIB
    x[1].fill_(1.0)
    grown = _resident() - before
    assert 15 * MIB < grown < 20 * MIB  # one row's pages
    assert x.sum().item() == x.shape[1]  # the untouched rows read as zeros
    assert _resident() - before < grown + 4 * MIB  # reading them made nothing resident
    row = x[1]
    del x
    assert _resident() - before > 15 * MIB  # a view still holds the mapping
    del row
    assert _resident() - before < 4 * MIB


@on_linux
def test_a_large_cpu_kv_cache_holds_only_what_it_wrote():
    from codellama_fast.engine import LlamaConfig
    from codellama_fast.engine.cache import KVCache

    cfg = LlamaConfig(vocab_size=64, hidden_size=512, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                      intermediate_size=64)
    before = _resident()
    cache = KVCache(cfg, 8, 2048, torch.float32, torch.device("cpu"), grow=False)  # 32 MiB per tensor, 128 MiB in all
    assert cache.held_bytes == 128 * MIB and _resident() - before < 4 * MIB
    for k, v in cache.layers:
        k[0].fill_(1.0)
        v[0].fill_(1.0)
    assert 15 * MIB < _resident() - before < 20 * MIB  # row 0 of 8
    assert all(not k[1:].any() and not v[1:].any() for k, v in cache.layers)


@on_linux
def test_a_sparse_tensor_is_lazily_zeroed_from_a_smaller_size():
    before = _resident()
    x = lazy_zeros.zeros((4, MIB), torch.float32, torch.device("cpu"), sparse=True)  # 16 MiB (rows of 4), under LAZY_BYTES
    assert x.data_ptr() % 4096 == 0 and _resident() - before < 2 * MIB  # a fresh mapping, nothing resident
    unwritten = _resident()
    x[0].fill_(1.0)
    assert 3 * MIB < _resident() - unwritten < 6 * MIB and not x[1:].any()  # one row's pages
    small = lazy_zeros.zeros((1000,), torch.float32, torch.device("cpu"), sparse=True)  # under SPARSE_LAZY_BYTES
    assert not small.any()
