"""The report's arithmetic on hand-made records: ratios, targets, training overhead, files."""

from __future__ import annotations

import json

import pytest

from . import report
from .harness import FLOOR, FORWARD, FORWARD_BACKWARD, NAIVE, OURS, STOCK, Record

HEADLINE = ("vit_h14_b8", "ViT-H/14, batch 8")
ENV = {
    "device_type": "cpu", "device": "Test CPU", "cpu": "Test CPU (R) 9000 @ 3GHz", "cpu_threads": 2,
    "cpus_allowed": 2, "torch": "2.14.1", "cuda": None, "triton": "3.8.0", "lowres_kernels": "0.1.0",
    "python": "3.11", "commit": "abc1234", "date": "2026-01-01 00:00 UTC", "command": "pytest bench/",
}


def _record(op, peer, kind, seconds, peak, pass_name=FORWARD_BACKWARD, shape=HEADLINE):
    return Record(op, shape[0], shape[1], peer, kind, pass_name, peak, median_s=seconds, min_s=seconds, iqr_s=0.0,
                  rounds=3)


def _records():
    op = "domain_attention"
    return [
        _record(op, "ours-cpp", OURS, 0.10, 1000),
        _record(op, "ours-triton", OURS, 0.20, 1000),
        _record(op, "naive", NAIVE, 2.00, 40_000),
        _record(op, "torch-matmul", STOCK, 0.18, 3000),
        _record(op, "torch-sdpa-compile", STOCK, 0.12, 2000),
        _record(op, "floor-gemm", FLOOR, 0.08, 900),
        _record(op, "ours-cpp", OURS, 0.05, 500, pass_name=FORWARD),
        _record(op, "naive", NAIVE, 1.00, 20_000, pass_name=FORWARD),
        _record(report.TRAINING_STEP, report.BASELINE_FREE, "end-to-end", 2.0, 10, "training step", ("ViT-B-16", "ViT-B/16, batch 4")),
        _record(report.TRAINING_STEP, report.WITH_BASELINES, "end-to-end", 2.1, 10, "training step", ("ViT-B-16", "ViT-B/16, batch 4")),
    ]


def test_ratios_are_peer_over_fastest_ours():
    rows = report.group_rows(_records())[("domain_attention", "vit_h14_b8", FORWARD_BACKWARD)]
    ratios = {row.record.peer: row.time_ratio for row in rows}
    assert ratios == pytest.approx({
        "ours-cpp": 1.0, "ours-triton": 2.0, "naive": 20.0, "torch-matmul": 1.8, "torch-sdpa-compile": 1.2,
        "floor-gemm": 0.8,
    })
    assert {row.record.peer: row.memory_ratio for row in rows}["naive"] == pytest.approx(40.0)


def test_targets_use_the_best_stock_peer_and_the_gemm_floor():
    results = {r["target"]: r for r in report.evaluate_targets(_records(), "cpu") if r["op"] == "domain_attention"}
    naive = results["speed-up over the naive oracle"]
    assert naive["measured"] == pytest.approx(20.0) and naive["met"] is True  # >= 15
    stock = results["speed-up over the best stock-PyTorch peer"]
    assert stock["measured"] == pytest.approx(1.2) and stock["against"] == "torch-sdpa-compile" and stock["met"] is False
    floor = results["time / GEMM floor"]
    assert floor["measured"] == pytest.approx(1.25) and floor["met"] is True  # <= 1.5
    memory = results["peak memory / naive"]
    assert memory["measured"] == pytest.approx(1 / 40) and memory["met"] is True  # <= 1/20
    tokenize = [r for r in report.evaluate_targets(_records(), "cpu") if r["op"].startswith("subkernel")]
    assert tokenize and all(r["measured"] is None and r["met"] is None for r in tokenize)


def test_training_overhead_in_percent():
    (step,) = report.training_overheads(_records())
    assert step["label"] == "ViT-B/16, batch 4"
    assert step["overhead_percent"] == pytest.approx(5.0)


def test_device_slug():
    assert report.device_slug(ENV) == "cpu-test-9000"
    assert report.device_slug({**ENV, "device_type": "cuda", "device": "NVIDIA H100 80GB HBM3"}) == "cuda-nvidia-h100-80gb-hbm3"


def test_write_results_and_read_back_from_benchmark_json(tmp_path):
    records = _records()
    paths = report.write_results(tmp_path, ENV, records)
    assert sorted(p.name for p in paths) == ["cpu-test-9000.json", "cpu-test-9000.md", "cpu-test-9000.png"]
    markdown = (tmp_path / "cpu-test-9000.md").read_text()
    assert "| domain_attention | 100.00 ms (ours-cpp) | 20.00× | 1.20× (torch-sdpa-compile) | 1.25× |" in markdown
    assert "| ViT-B/16, batch 4 | 2.00 s | 2.10 s | +5.0 % |" in markdown
    payload = json.loads((tmp_path / "cpu-test-9000.json").read_text())
    assert payload["training_step"][0]["overhead_percent"] == pytest.approx(5.0)
    # pytest-benchmark's JSON: our fields in extra_info, times in stats.
    benchmark_json = {"benchmarks": [
        {"extra_info": {k: v for k, v in r.to_dict().items() if k not in ("median_s", "min_s", "iqr_s", "rounds")},
         "stats": {"median": r.median_s, "min": r.min_s, "iqr": r.iqr_s, "rounds": r.rounds}}
        for r in records
    ] + [{"extra_info": {}, "stats": {}}]}
    assert report.records_from_benchmark_json(benchmark_json) == records


def test_records_file_round_trips_and_renders(tmp_path):
    path = tmp_path / "run.jsonl"
    records = _records()
    report.append_environment(path, ENV)
    with open(path, "a") as lines:
        for record in records[:4]:
            lines.write(json.dumps({"record": record.to_dict()}) + "\n")
    # A second run appending to the same file (say, after the first was killed) keeps the first environment.
    report.append_environment(path, {**ENV, "commit": "later"})
    with open(path, "a") as lines:
        for record in records[4:]:
            lines.write(json.dumps({"record": record.to_dict()}) + "\n")
    with open(path, "a") as lines:
        lines.write('{"record": {"op": "domain_att')  # a run killed while writing its last line
    env, read = report.records_from_jsonl(path)
    assert env == ENV and read == records
    report.main([str(path), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "cpu-test-9000.md").exists()
