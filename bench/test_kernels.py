"""Forward and forward+backward time and peak memory of each op, per shape, for every peer."""

from __future__ import annotations

import pytest

from . import harness


@pytest.mark.parametrize("pass_name", harness.PASSES)
@pytest.mark.parametrize("op, peer", harness.op_peer_pairs())
def test_op(benchmark, bench_settings, shape, op, peer, pass_name):
    op_spec, peer_spec = harness.OPS[op], harness.PEERS[peer]
    reason = peer_spec.skip_reason(op_spec, bench_settings.device)
    if reason is not None:
        pytest.skip(reason)
    benchmark.group = f"{op} | {shape.label} | {pass_name}"
    work = harness.build(op_spec, shape, peer_spec, bench_settings)
    run = harness.pass_callable(work, pass_name, bench_settings.device)
    record = harness.Record(op, shape.name, shape.label, peer, peer_spec.kind, pass_name, peak_bytes=None)
    harness.measure(benchmark, run, bench_settings, first_call_is_setup=peer_spec.first_call_is_setup, record=record)
    assert record.peak_bytes is not None and record.peak_bytes >= 0
