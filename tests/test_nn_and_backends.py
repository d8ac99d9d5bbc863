"""The drop-in modules and the backend switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kernel_testing import OpCalls, check_autocast_computes_in_float32

import lowres_kernels as lk
from lowres_kernels import _backend, ops
from lowres_kernels.nn import DomainAttention, SubKernelPatchEmbed


def patch_conv(dim=8, patch=14, bias=False):
    torch.manual_seed(0)
    return nn.Conv2d(3, dim, kernel_size=patch, stride=patch, bias=bias)


@pytest.mark.parametrize("bias", [False, True])
def test_subkernel_patch_embed_wraps_a_frozen_conv(bias):
    conv = patch_conv(bias=bias)
    embed = SubKernelPatchEmbed.from_conv(conv, pool="avg", blend=0.5)
    assert embed.weight is conv.weight and not embed.weight.requires_grad
    assert [name for name, p in embed.named_parameters() if p.requires_grad] == ["logits"]
    assert torch.equal(embed.logits, torch.ones(49))  # the release's initialisation
    x = torch.randn(2, 3, 28, 56)
    expected = lk.reference.subkernel_tokenize(x, conv.weight, embed.logits, conv.bias, pool="avg", blend=0.5)
    torch.testing.assert_close(embed(x), expected)
    # blend = 0 is exactly the frozen conv: the module is a drop-in replacement.
    identity = SubKernelPatchEmbed.from_conv(conv, blend=0.0)
    torch.testing.assert_close(identity(x), conv(x), atol=1e-5, rtol=1e-5)


def test_subkernel_patch_embed_learns_only_the_logits():
    embed = SubKernelPatchEmbed.from_conv(patch_conv())
    optimizer = torch.optim.SGD([p for p in embed.parameters() if p.requires_grad], lr=1.0)
    weight_before = embed.weight.clone()
    embed(torch.randn(2, 3, 28, 28)).square().mean().backward()
    optimizer.step()
    assert torch.equal(embed.weight, weight_before)
    assert not torch.equal(embed.logits, torch.ones(49))
    grid = embed.subkernel_weights()
    assert grid.shape == (7, 7) and torch.isclose(grid.sum(), torch.tensor(1.0))


def test_subkernel_patch_embed_follows_the_input_dtype():
    embed = SubKernelPatchEmbed.from_conv(patch_conv())
    x = torch.randn(1, 3, 28, 28)
    out = embed(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), embed(x), atol=1e-5, rtol=1e-5)


def test_subkernel_patch_embed_repr_and_state_dict():
    embed = SubKernelPatchEmbed(3, 16, 14, sub=7, step=1, pool="max", blend=0.5)
    assert "sub=7, step=1, pool='max', blend=0.5, num_subkernels=49" in repr(embed)
    assert set(embed.state_dict()) == {"weight", "logits"}


@pytest.mark.parametrize(
    "conv, message",
    [
        (nn.Conv2d(3, 8, kernel_size=14, stride=7), "stride = kernel"),
        (nn.Conv2d(3, 8, kernel_size=14, stride=14, padding=1), "no padding"),
        (nn.Conv2d(3, 8, kernel_size=(14, 7), stride=(14, 7)), "square kernel"),
        (nn.Linear(3, 8), "expected an nn.Conv2d"),
    ],
)
def test_subkernel_patch_embed_rejects_what_is_not_a_patch_embedding(conv, message):
    with pytest.raises(ValueError, match=message):
        SubKernelPatchEmbed.from_conv(conv)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(sub=5), r"SubKernelPatchEmbed: sub=5 must divide the kernel size q=14"),
        (dict(step=3), r"last offset 18 falls outside the kernel of size q=14"),
        (dict(pool="median"), r"pool must be one of \('max', 'avg'\), got 'median'"),
        (dict(blend=float("inf")), r"blend must be a finite number"),
        (dict(num_subkernels=48), r"square number T = n\*n of entries, got T = 48"),
    ],
)
def test_subkernel_patch_embed_rejects_options_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        SubKernelPatchEmbed(3, 8, 14, **options)
    with pytest.raises(ValueError, match=message):
        SubKernelPatchEmbed.from_conv(nn.Conv2d(3, 8, kernel_size=14, stride=14), **options)


def test_domain_attention_module():
    torch.manual_seed(0)
    module = DomainAttention(num_maps=4, grid_size=3, num_prefix_tokens=2)
    for name in ("maps", "mix_logits", "alpha"):
        parameter = getattr(module, name)
        assert parameter.requires_grad and torch.equal(parameter, torch.ones_like(parameter)), name
    assert module.maps.shape == (4, 6, 6) and module.mix_logits.shape == (4,) and module.alpha.shape == ()
    proj = nn.Linear(5, 5)
    v = torch.randn(2, 11, 5)
    with torch.no_grad():
        module.alpha.fill_(0.25)
        module.maps.normal_()
    expected = 0.25 * proj(lk.reference.domain_attention(v, module.maps, module.mix_logits, num_prefix_tokens=2))
    torch.testing.assert_close(module(v, proj), expected)
    torch.testing.assert_close(module(v), 0.25 * lk.reference.domain_attention(v, module.maps, module.mix_logits, num_prefix_tokens=2))
    module(v, proj).sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert "num_maps=4, grid_size=3, num_prefix_tokens=2" in repr(module)


def _train_domain_attention(init):
    """Three Adam steps of a DomainAttention against a fixed random target; returns the module."""
    torch.manual_seed(0)
    module = DomainAttention(num_maps=3, grid_size=3, num_prefix_tokens=1, init=init)
    generator = torch.Generator().manual_seed(1)
    v, target = torch.randn(2, 10, 4, generator=generator), torch.randn(2, 10, 4, generator=generator)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        ((module(v) - target) ** 2).mean().backward()
        optimizer.step()
    return module


def test_domain_attention_ones_init_keeps_the_maps_identical_and_random_breaks_the_symmetry():
    ones = _train_domain_attention("ones")
    assert not torch.equal(ones.maps[0], torch.ones_like(ones.maps[0]))  # the maps did train
    assert all(torch.equal(ones.maps[c], ones.maps[0]) for c in range(3))
    assert torch.equal(ones.mix_logits, ones.mix_logits[0].expand(3))

    torch.manual_seed(0)
    start = DomainAttention(num_maps=3, grid_size=3, num_prefix_tokens=1, init="random").maps.detach().clone()
    assert (start - 1).std().item() == pytest.approx(DomainAttention.RANDOM_INIT_STD, rel=0.3)
    random = _train_domain_attention("random")
    updates = random.maps.detach() - start  # the same start: the same seed
    assert (updates[1] - updates[0]).abs().max() > 1e-3 and (updates[2] - updates[0]).abs().max() > 1e-3
    assert random.mix_logits.max() - random.mix_logits.min() > 1e-3
    with pytest.raises(ValueError, match=r"DomainAttention: init must be one of \('ones', 'random'\), got 'zeros'"):
        DomainAttention(init="zeros")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_maps=0), r"DomainAttention: num_maps must be a positive int, got 0"),
        (dict(grid_size=2.0), r"DomainAttention: grid_size must be a positive int, got 2.0"),
        (dict(num_prefix_tokens=-1), r"DomainAttention: num_prefix_tokens must be a non-negative int, got -1"),
    ],
)
def test_domain_attention_module_rejects_options_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        DomainAttention(**options)


def test_domain_attention_module_follows_the_input_dtype():
    module = DomainAttention(num_maps=2, grid_size=2, num_prefix_tokens=1)
    out = module(torch.randn(1, 5, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_available_backends_on_cpu():
    assert {"cpp", "reference"} <= set(lk.available_backends("cpu"))
    assert "cuda" not in lk.available_backends("cpu")


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_backend_keyword_and_environment_variable_select_the_backend(backend, monkeypatch):
    v = torch.randn(2, 5, 3)
    maps, mix = torch.randn(2, 4, 4), torch.randn(2)
    # The C++ kernel runs as the op lowres::domain_attention; the reference is plain torch code.
    compiled_op_runs = backend == "cpp"
    with OpCalls() as calls:
        by_keyword = lk.domain_attention(v, maps, mix, backend=backend)
    assert ("lowres.domain_attention" in calls.names()) is compiled_op_runs
    monkeypatch.setenv("LOWRES_BACKEND", backend)
    with OpCalls() as calls:
        by_environment = lk.domain_attention(v, maps, mix)
    assert ("lowres.domain_attention" in calls.names()) is compiled_op_runs
    torch.testing.assert_close(by_environment, by_keyword)


def test_unknown_or_unavailable_backend_raises(monkeypatch):
    v, maps, mix = torch.randn(1, 5, 3), torch.randn(1, 4, 4), torch.randn(1)
    with pytest.raises(ValueError, match=r"unknown backend='fast'"):
        lk.domain_attention(v, maps, mix, backend="fast")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot run on cpu tensors"):
        lk.domain_attention(v, maps, mix, backend="cuda")
    monkeypatch.setenv("LOWRES_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"unknown LOWRES_BACKEND='nope'"):
        lk.domain_attention(v, maps, mix)


def test_the_default_backend_on_cpu_is_the_cpp_kernel(monkeypatch):
    monkeypatch.delenv("LOWRES_BACKEND", raising=False)
    x = torch.randn(1, 3, 14, 14)
    weight, logits = torch.randn(4, 3, 14, 14), torch.randn(49)
    with torch.autograd.profiler.profile() as prof:
        lk.subkernel_tokenize(x, weight, logits)
    assert any(e.name == "lowres::subkernel_tokenize_with_indices" for e in prof.function_events)


@pytest.mark.parametrize("backend, compile_backend", [("cpp", None), ("reference", None), ("cpp", "aot_eager")])
def test_ops_compute_in_float32_under_autocast(backend, compile_backend):
    check_autocast_computes_in_float32("cpu", backend, compile_backend)


@pytest.mark.parametrize(
    "num_tokens, pool, dtype, trains_only_logits, expected",
    [
        (64 * 256, "avg", torch.float32, True, True),  # the measured case: trained at 64 ViT-H/14 images
        (64 * 256 - 1, "avg", torch.float32, True, False),
        (64 * 256, "avg", torch.float32, False, False),  # inference, or gradients the benchmark did not time
        (64 * 256, "max", torch.float32, True, False),
        (64 * 256, "avg", torch.float64, True, False),  # unmeasured dtypes stay on CUDA
        (64 * 256, "avg", torch.bfloat16, True, False),
    ],
)
def test_triton_is_chosen_for_tokenization_only_where_it_was_measured_faster(
    num_tokens, pool, dtype, trains_only_logits, expected
):
    assert _backend.triton_is_faster_for_tokenize(num_tokens, pool, dtype, trains_only_logits) is expected


@pytest.mark.parametrize(
    "cuda_built, triton, prefer_triton, expected",
    [
        (True, True, False, "cuda"),
        (True, True, True, "triton"),
        (True, False, True, "cuda"),  # no Triton installed: the preference cannot apply
        (False, True, False, "triton"),
        (False, True, True, "triton"),
        (False, False, True, "reference"),
        (False, False, False, "reference"),
    ],
)
def test_auto_backend_on_a_gpu(monkeypatch, cuda_built, triton, prefer_triton, expected):
    monkeypatch.delenv("LOWRES_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "cuda_kernels_built", lambda: cuda_built)
    monkeypatch.setattr(_backend, "triton_available", lambda device: triton)
    choice = _backend.resolve_backend("op", None, torch.device("cuda"), prefer_triton=lambda: prefer_triton)
    assert choice == expected


def test_the_measured_rule_is_asked_only_for_a_choice_between_cuda_and_triton(monkeypatch):
    monkeypatch.delenv("LOWRES_BACKEND", raising=False)

    def must_not_be_asked():
        raise AssertionError("the rule was evaluated")

    assert _backend.resolve_backend("op", None, torch.device("cpu"), prefer_triton=must_not_be_asked) == "cpp"
    assert _backend.resolve_backend("op", "reference", torch.device("cpu"), prefer_triton=must_not_be_asked) == "reference"
    monkeypatch.setattr(_backend, "cuda_kernels_built", lambda: True)
    monkeypatch.setattr(_backend, "triton_available", lambda device: False)
    assert _backend.resolve_backend("op", None, torch.device("cuda"), prefer_triton=must_not_be_asked) == "cuda"


@pytest.mark.parametrize("grad_of", ["logits", "x", "weight", None])
def test_subkernel_tokenize_gives_the_rule_its_call(monkeypatch, grad_of):
    """The entry point hands the rule the token count, pool, dtype and which gradients are wanted."""
    monkeypatch.delenv("LOWRES_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "cuda_kernels_built", lambda: True)
    monkeypatch.setattr(_backend, "triton_available", lambda device: True)
    calls = []
    monkeypatch.setattr(
        ops, "triton_is_faster_for_tokenize", lambda *args: calls.append(args) or False
    )
    monkeypatch.setattr(ops, "resolve_backend", _resolve_as_if_on_a_gpu)
    x, weight, logits = torch.randn(2, 3, 28, 42), torch.randn(4, 3, 14, 14), torch.randn(49)
    for name, t in (("x", x), ("weight", weight), ("logits", logits)):
        t.requires_grad_(name == grad_of)
    lk.subkernel_tokenize(x, weight, logits, pool="avg")
    assert calls == [(2 * 2 * 3, "avg", torch.float32, grad_of == "logits")]
    calls.clear()
    with torch.no_grad():
        lk.subkernel_tokenize(x, weight, logits, pool="avg")
    assert calls == [(2 * 2 * 3, "avg", torch.float32, False)]


def _resolve_as_if_on_a_gpu(op, backend, device, *, prefer_triton=None):
    """resolve_backend for `device` as a GPU would answer it, then the CPU kernel to run the call."""
    _backend.resolve_backend(op, backend, torch.device("cuda"), prefer_triton=prefer_triton)
    return "cpp"
