"""The peers are right: stock compositions match lowres_kernels.reference (values and gradients),
and the floors and measurements have the sizes we claim. Quick; runs in the CI smoke test."""

from __future__ import annotations

import pytest
import torch

import lowres_kernels as lk

from . import harness, peers

TOKENIZE_CASES = [
    # (D, q, image, sub, step, T, pool, blend)
    (8, 14, 28, 7, 2, 49, "max", 1.0),  # ViT-H/14 geometry, the paper's reading
    (8, 14, 28, 7, 2, 49, "avg", 0.5),  # the release
    (6, 14, 42, 7, 1, 49, "max", 0.25),  # step 1: every sub-kernel inside the kernel
    (5, 16, 32, 8, 2, 49, "max", 1.0),  # ViT-B/16 geometry: sub-kernels past the edge
    (4, 6, 12, 3, 1, 16, "avg", 1.0),
]


def _double(*tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


@pytest.mark.parametrize("dim, patch, image, sub, step, count, pool, blend", TOKENIZE_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_stock_tokenize_matches_reference(dim, patch, image, sub, step, count, pool, blend, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, image, image, generator=gen)
    weight = torch.randn(dim, 3, patch, patch, generator=gen)
    logits = torch.randn(count, generator=gen)
    bias = torch.randn(dim, generator=gen)
    inputs = _double(x, weight, logits) + (_double(bias) if with_bias else [None])
    options = dict(sub=sub, step=step, pool=pool, blend=blend)
    expected = lk.reference.subkernel_tokenize(*inputs, **options)
    got = peers.stock_subkernel_tokenize(*inputs, **options)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    wrt = [t for t in inputs if t is not None]
    torch.testing.assert_close(
        torch.autograd.grad(got, wrt, grad), torch.autograd.grad(expected, wrt, grad), rtol=1e-9, atol=1e-9
    )


DOMAIN_CASES = [(2, 16, 3, 1), (3, 4, 2, 1), (2, 4, 3, 0), (1, 3, 2, 2)]  # (B, h, C, prefix tokens)


def _domain_inputs(batch, grid, num_maps, prefix, width=16):
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(batch, prefix + grid * grid, width, generator=gen)
    maps = torch.randn(num_maps, 2 * grid, 2 * grid, generator=gen) * 2
    mix_logits = torch.randn(num_maps, generator=gen)
    return v, maps, mix_logits


@pytest.mark.parametrize("batch, grid, num_maps, prefix", DOMAIN_CASES)
@pytest.mark.parametrize(
    "peer", [peers.stock_domain_attention_matmul, peers.stock_domain_attention_sdpa], ids=["matmul", "sdpa"]
)
def test_stock_domain_attention_matches_reference(peer, batch, grid, num_maps, prefix):
    inputs = _double(*_domain_inputs(batch, grid, num_maps, prefix))
    expected = lk.reference.domain_attention(*inputs, num_prefix_tokens=prefix)
    got = peer(*inputs, num_prefix_tokens=prefix)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    grad = torch.randn(expected.shape, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad(got, inputs, grad), torch.autograd.grad(expected, inputs, grad), rtol=1e-8, atol=1e-8
    )


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("batch, grid, num_maps, prefix", DOMAIN_CASES[1:2])
def test_flex_peer_forward_matches_reference(batch, grid, num_maps, prefix):
    # Eager FlexAttention (unfused, forward only on CPU) checks the score_mod; CUDA runs it compiled.
    inputs = _domain_inputs(batch, grid, num_maps, prefix)
    expected = lk.reference.domain_attention(*inputs, num_prefix_tokens=prefix)
    with torch.no_grad():
        got = peers.stock_domain_attention_flex(*inputs, num_prefix_tokens=prefix)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mixed_attention_rows_are_distributions_with_uniform_prefix_rows():
    _, maps, mix_logits = _domain_inputs(1, 4, 3, 2)
    attention = peers.mixed_attention(maps, mix_logits, num_prefix_tokens=2)
    assert attention.shape == (18, 18)
    torch.testing.assert_close(attention.sum(-1), torch.ones(18))
    torch.testing.assert_close(attention[:2], torch.full((2, 18), 1 / 18))


def test_floor_gemms_have_the_ops_main_gemm_shape():
    shape = next(s for s in harness.bench_shapes("cpu", smoke=False) if s.name == "vit_h14_b8")
    cpu = torch.device("cpu")
    tokenize = harness.floor_gemm_inputs(harness.OPS["subkernel_tokenize(max)"], shape, cpu)
    # (B * (224/7)^2, 3 * 7^2) x (3 * 7^2, D)
    assert [tuple(t.shape) for t in tokenize.args] == [(8 * 32 * 32, 147), (147, 1280)]
    assert [t is tokenize.args[1] for t in tokenize.wrt] == [True]
    attention = harness.floor_gemm_inputs(harness.OPS["domain_attention"], shape, cpu)
    # (N, N) x (N, B * Dv) with N = 1 + 16^2
    assert [tuple(t.shape) for t in attention.args] == [(257, 257), (257, 8 * 1280)]
    embed = harness.floor_patch_embed_inputs(harness.OPS["subkernel_tokenize(avg,blend=0.5)"], shape, cpu)
    assert peers.floor_patch_embed(*embed.args).shape == (8, 1280, 16, 16)


def test_cpu_peak_memory_follows_allocations_and_frees():
    def allocate():
        first = torch.empty(1_000_000, dtype=torch.uint8)
        second = torch.empty(2_000_000, dtype=torch.uint8)
        del first
        third = torch.empty(500_000, dtype=torch.uint8)
        return second, third

    assert harness.peak_memory_bytes(allocate, torch.device("cpu")) == 3_000_000


def test_rounds_fill_the_budget_but_cap_slow_calls():
    settings = harness.Settings(torch.device("cpu"), smoke=False, seconds=1.0, max_case_seconds=6.0, min_rounds=3)
    assert settings.rounds(0.01) == 100
    assert settings.rounds(0.5) == 3
    assert settings.rounds(2.5) == 2
    assert settings.rounds(11.0) == 1
