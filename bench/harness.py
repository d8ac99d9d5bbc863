"""The one benchmark harness: shapes, ops, peers, and how a case is timed and its memory measured.

A case is (op, shape, peer, pass). Every peer of an op gets the same inputs (seeded), and
`pass` is "forward" (grad mode on, inputs requiring grad as in training) or "forward+backward"
(`torch.autograd.grad` of a fixed random output gradient with respect to the inputs that train).
Times are medians of pytest-benchmark rounds; peak memory is the most bytes allocated during one
call above what was live before it (CUDA: `torch.cuda.max_memory_allocated`; CPU: the running
sum of the allocator's alloc/free events recorded by `torch.profiler` with `profile_memory=True`,
which sees every tensor allocation but not BLAS/oneDNN-internal scratch buffers).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

import lowres_kernels as lk

from . import peers

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"
PASSES = (FORWARD, FORWARD_BACKWARD)

OURS, NAIVE, STOCK, FLOOR = "ours", "naive", "stock", "floor"


@dataclass(frozen=True)
class ViTShape:
    """The sizes both ops see in one ViT: its patch embedding and one block's attention width."""

    name: str  # test id, e.g. "vit_h14_b8"
    model: str  # e.g. "ViT-H/14"
    batch: int
    width: int  # D: embedding width (the value projection is full width too)
    patch: int  # q
    image: int  # H = W in pixels
    sub: int  # u: sub-kernel size and stride
    step: int
    num_subkernels: int  # T
    num_maps: int  # C
    num_prefix_tokens: int = 1

    @property
    def grid(self) -> int:  # h: tokens per side
        return self.image // self.patch

    @property
    def tokens(self) -> int:  # N
        return self.num_prefix_tokens + self.grid**2

    @property
    def fine(self) -> int:  # p: sub-kernel outputs per side
        return self.image // self.sub

    @property
    def label(self) -> str:
        return f"{self.model}, batch {self.batch}"


# The paper's main model (ImageBind's ViT-H/14 tower) and a common small one.
_VIT_H14 = dict(model="ViT-H/14", width=1280, patch=14, image=224, sub=7, step=2, num_subkernels=49, num_maps=10)
_VIT_B16 = dict(model="ViT-B/16", width=768, patch=16, image=224, sub=8, step=2, num_subkernels=49, num_maps=10)
# The smoke shape: ViT-H/14's kernel geometry at toy sizes, so CI exercises every code path in seconds.
_TINY14 = dict(model="tiny/14", width=32, patch=14, image=56, sub=7, step=2, num_subkernels=49, num_maps=3)


def _shape(config: dict, batch: int) -> ViTShape:
    name = config["model"].lower().replace("-", "_").replace("/", "") + f"_b{batch}"
    return ViTShape(name=name, batch=batch, **config)


HEADLINE_MODEL = "ViT-H/14"
HEADLINE_BATCH = 8


def bench_shapes(device_type: str, smoke: bool) -> list[ViTShape]:
    if smoke:
        return [_shape(_TINY14, 2)]
    vit_h_batches = (1, 8, 64) if device_type == "cuda" else (1, 8)
    return [_shape(_VIT_B16, 8)] + [_shape(_VIT_H14, batch) for batch in vit_h_batches]


@dataclass(frozen=True)
class OpSpec:
    name: str
    function: str  # the lowres_kernels function it times: "subkernel_tokenize" | "domain_attention"
    options: dict = field(default_factory=dict)


OPS = {
    op.name: op
    for op in (
        # The paper's reading (max pooling, no blend) and the authors' release (avg pooling, blend 0.5).
        OpSpec("subkernel_tokenize(max)", "subkernel_tokenize", {"pool": "max", "blend": 1.0}),
        OpSpec("subkernel_tokenize(avg,blend=0.5)", "subkernel_tokenize", {"pool": "avg", "blend": 0.5}),
        OpSpec("domain_attention", "domain_attention"),
    )
}


@dataclass
class Workload:
    """A callable with its inputs; `wrt` are the inputs whose gradients the backward computes."""

    fn: Callable[..., torch.Tensor]
    args: tuple
    kwargs: dict
    wrt: tuple


def _randn(*size: int, device: torch.device, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*size, generator=generator) * scale).to(device)


def op_inputs(op: OpSpec, shape: ViTShape, device: torch.device) -> Workload:
    """The op's own inputs (seeded) with the workload calling lowres_kernels' default; peers replace fn."""
    gen = torch.Generator().manual_seed(0)
    if op.function == "subkernel_tokenize":
        x = _randn(shape.batch, 3, shape.image, shape.image, device=device, generator=gen)
        weight = _randn(shape.width, 3, shape.patch, shape.patch, device=device, generator=gen, scale=(3 * shape.patch**2) ** -0.5)
        # The patch kernel is frozen and the image needs no gradient: only the logits train.
        logits = _randn(shape.num_subkernels, device=device, generator=gen).requires_grad_()
        kwargs = {"sub": shape.sub, "step": shape.step, **op.options}
        return Workload(lk.subkernel_tokenize, (x, weight, logits), kwargs, (logits,))
    side = 2 * shape.grid
    v = _randn(shape.batch, shape.tokens, shape.width, device=device, generator=gen).requires_grad_()
    maps = _randn(shape.num_maps, side, side, device=device, generator=gen).requires_grad_()
    mix_logits = _randn(shape.num_maps, device=device, generator=gen).requires_grad_()
    kwargs = {"num_prefix_tokens": shape.num_prefix_tokens}
    return Workload(lk.domain_attention, (v, maps, mix_logits), kwargs, (v, maps, mix_logits))


def floor_gemm_inputs(op: OpSpec, shape: ViTShape, device: torch.device) -> Workload:
    """One matmul shaped like the op's main GEMM, with gradients where the op needs them."""
    gen = torch.Generator().manual_seed(0)
    if op.function == "subkernel_tokenize":
        # (B p^2, 3 u^2) x (3 u^2, D): the mixed-kernel conv as a GEMM; backward: the kernel's gradient.
        cols = _randn(shape.batch * shape.fine**2, 3 * shape.sub**2, device=device, generator=gen)
        kernel = _randn(3 * shape.sub**2, shape.width, device=device, generator=gen).requires_grad_()
        return Workload(peers.floor_gemm, (cols, kernel), {}, (kernel,))
    # (N, N) x (N, B Dv): P @ v for the whole batch; backward: dP and dv.
    attention = _randn(shape.tokens, shape.tokens, device=device, generator=gen).requires_grad_()
    values = _randn(shape.tokens, shape.batch * shape.width, device=device, generator=gen).requires_grad_()
    return Workload(peers.floor_gemm, (attention, values), {}, (attention, values))


def floor_patch_embed_inputs(op: OpSpec, shape: ViTShape, device: torch.device) -> Workload:
    x, weight, _ = op_inputs(op, shape, device).args
    weight = weight.clone().requires_grad_()  # stands in for the logits: the gradient GEMM the op must do
    return Workload(peers.floor_patch_embed, (x, weight), {}, (weight,))


@dataclass(frozen=True)
class Peer:
    name: str
    kind: str  # OURS | NAIVE | STOCK | FLOOR
    ops: tuple  # op names this peer implements
    fn: Optional[Callable] = None  # replaces the workload's fn (None: keep lowres_kernels')
    backend: Optional[str] = None  # our backend, for kind OURS
    compiled: bool = False
    inputs: Callable[[OpSpec, ViTShape, torch.device], Workload] = op_inputs

    @property
    def first_call_is_setup(self) -> bool:
        """torch.compile compiles on the first call; Triton autotunes there (timing each config
        with a 256 MB cache-flush buffer), which is neither the op's time nor its memory."""
        return self.compiled or self.backend == "triton"

    def skip_reason(self, op: OpSpec, device: torch.device) -> Optional[str]:
        if self.backend is not None and self.backend not in lk.available_backends(device):
            return f"backend {self.backend!r} is not available on {device.type} (have {lk.available_backends(device)})"
        if self.backend == "triton":
            import importlib.util

            if importlib.util.find_spec(f"lowres_kernels.triton.{op.function}") is None:
                return f"lowres_kernels.triton.{op.function} does not exist yet"
        if self.fn is peers.stock_domain_attention_flex and device.type == "cpu":
            return "FlexAttention has no backward on CPU in this torch"
        return None


_TOKENIZE = ("subkernel_tokenize(max)", "subkernel_tokenize(avg,blend=0.5)")
_ATTENTION = ("domain_attention",)
_ALL = _TOKENIZE + _ATTENTION

PEERS = {
    peer.name: peer
    for peer in (
        *(Peer(f"ours-{backend}", OURS, _ALL, backend=backend) for backend in ("cpp", "cuda", "triton")),
        Peer("naive", NAIVE, _ALL, backend="reference"),
        Peer("torch", STOCK, _TOKENIZE, fn=peers.stock_subkernel_tokenize),
        Peer("torch-compile", STOCK, _TOKENIZE, fn=peers.stock_subkernel_tokenize, compiled=True),
        Peer("torch-matmul", STOCK, _ATTENTION, fn=peers.stock_domain_attention_matmul),
        Peer("torch-matmul-compile", STOCK, _ATTENTION, fn=peers.stock_domain_attention_matmul, compiled=True),
        Peer("torch-sdpa", STOCK, _ATTENTION, fn=peers.stock_domain_attention_sdpa),
        Peer("torch-sdpa-compile", STOCK, _ATTENTION, fn=peers.stock_domain_attention_sdpa, compiled=True),
        Peer("torch-flex-compile", STOCK, _ATTENTION, fn=peers.stock_domain_attention_flex, compiled=True),
        Peer("floor-gemm", FLOOR, _ALL, inputs=floor_gemm_inputs),
        Peer("floor-patch-embed", FLOOR, ("subkernel_tokenize(avg,blend=0.5)",), inputs=floor_patch_embed_inputs),
    )
}


def op_peer_pairs() -> list[tuple[str, str]]:
    return [(op, peer.name) for op in OPS for peer in PEERS.values() if op in peer.ops]


@dataclass(frozen=True)
class Settings:
    device: torch.device
    smoke: bool  # tiny shapes; compiled peers use the aot_eager backend (traced, not code-generated)
    seconds: float  # time budget for one case's rounds
    max_case_seconds: float  # fewer rounds (down to one) for calls so slow that the budget would be exceeded
    min_rounds: int
    records_path: Optional[Path] = None  # JSON lines, one per measured case, appended as measured

    def rounds(self, seconds_per_call: float) -> int:
        rounds = max(self.min_rounds, math.ceil(self.seconds / max(seconds_per_call, 1e-9)))
        if rounds * seconds_per_call > self.max_case_seconds:
            rounds = max(1, math.floor(self.max_case_seconds / seconds_per_call))
        return rounds

    @property
    def compile_backend(self) -> str:
        return "aot_eager" if self.smoke else "inductor"


_compiled: dict = {}


def compiled(fn: Callable, backend: str) -> Callable:
    """One static-shape torch.compile wrapper per (peer function, backend), shared by every case."""
    key = (fn, backend)
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, backend=backend, dynamic=False, fullgraph=True)
    return _compiled[key]


def build(op: OpSpec, shape: ViTShape, peer: Peer, settings: Settings) -> Workload:
    work = peer.inputs(op, shape, settings.device)
    if peer.kind in (OURS, NAIVE):
        work.kwargs["backend"] = peer.backend
    elif peer.fn is not None:
        work.fn = compiled(peer.fn, settings.compile_backend) if peer.compiled else peer.fn
    return work


def pass_callable(work: Workload, pass_name: str, device: torch.device) -> Callable[[], None]:
    """What one timed call runs, ending with a device synchronisation so wall time is the work's."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if pass_name == FORWARD:

        def forward() -> None:
            work.fn(*work.args, **work.kwargs)
            sync()

        return forward

    grad_output: list[torch.Tensor] = []

    def forward_backward() -> None:
        out = work.fn(*work.args, **work.kwargs)
        if not grad_output:  # drawn once, on the first (warm-up) call
            grad_output.append(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out))
        torch.autograd.grad(out, work.wrt, grad_output[0])
        sync()

    return forward_backward


def peak_memory_bytes(run: Callable[[], None], device: torch.device) -> int:
    """Most bytes allocated during `run()` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    # Each allocator event carries +bytes (alloc) or -bytes (free); their running sum is what is live.
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@dataclass
class Record:
    """One measured case, as written to the results (JSON) and read back by bench/report.py."""

    op: str
    shape: str
    label: str
    peer: str
    kind: str
    pass_name: str
    peak_bytes: Optional[int]
    median_s: Optional[float] = None
    min_s: Optional[float] = None
    iqr_s: Optional[float] = None
    rounds: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


RECORDS: list[Record] = []


def measure(
    benchmark, run: Callable[[], None], settings: Settings, *, first_call_is_setup: bool, record: Record
) -> Record:
    """Warms up, measures peak memory on one call, then times `run` with pytest-benchmark."""
    if first_call_is_setup:
        run()  # compiles / autotunes: neither timed nor counted in memory
    start = time.perf_counter()
    record.peak_bytes = peak_memory_bytes(run, settings.device)
    seconds_per_call = time.perf_counter() - start
    if seconds_per_call < 1.0:
        run()  # one more warm-up where it is cheap (allocator caches, BLAS/oneDNN primitive caches)
    rounds = settings.rounds(seconds_per_call)
    benchmark.extra_info.update({k: v for k, v in record.to_dict().items() if k not in ("median_s", "min_s", "iqr_s", "rounds")})
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and not getattr(benchmark, "disabled", False):
        record.median_s, record.min_s, record.iqr_s = stats.stats.median, stats.stats.min, stats.stats.iqr
        record.rounds = stats.stats.rounds
        RECORDS.append(record)
        if settings.records_path is not None:
            with open(settings.records_path, "a") as records:
                records.write(json.dumps({"record": record.to_dict()}) + "\n")
    return record
