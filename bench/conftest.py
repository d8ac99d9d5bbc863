"""pytest configuration of the benchmarks: options, shapes per session, and the end-of-run report.

    pytest bench/                                   # time every case on this machine, print ratios
    pytest bench/ --bench-save                      # ... and write bench/results/<device>.{md,json,png}
    pytest bench/ --benchmark-json=run.json         # ... keep pytest-benchmark's JSON (python -m bench.report run.json)
    pytest bench/ --benchmark-disable               # CI smoke test: tiny shapes, one call per case
    pytest bench/ --bench-records=run.jsonl         # ... append each case as it is measured (survives a kill;
                                                    #     python -m bench.report run.jsonl renders it)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from . import harness, report

_SETTINGS = pytest.StashKey[harness.Settings]()


def pytest_addoption(parser):
    group = parser.getgroup("lowres bench")
    group.addoption("--bench-smoke", action="store_true", default=os.environ.get("LOWRES_BENCH_SMOKE") == "1",
                    help="tiny shapes and traced-only torch.compile (automatic under --benchmark-disable)")
    group.addoption("--bench-device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where to run (auto: cuda when available)")
    group.addoption("--bench-seconds", type=float, default=1.0, help="time budget for one case's rounds")
    group.addoption("--bench-max-case-seconds", type=float, default=6.0,
                    help="slow cases (the naive oracle) run fewer rounds, down to one, to stay near this")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 under --bench-smoke, where oversubscribed "
                    "CI cores make multi-threaded tiny ops slow)")
    group.addoption("--bench-save", action="store_true",
                    help="write bench/results/<device>.md, .json and .png from this run")
    group.addoption("--bench-results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    group.addoption("--bench-records", type=Path, default=None,
                    help="append every measured case to this JSON-lines file as it finishes (after an "
                    "environment line), so a run that is killed keeps what it measured")


def settings(config) -> harness.Settings:
    if _SETTINGS not in config.stash:
        requested = config.getoption("--bench-device")
        if requested == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError("--bench-device cuda: torch sees no CUDA device")
        use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        config.stash[_SETTINGS] = harness.Settings(
            device=torch.device("cuda" if use_cuda else "cpu"),
            smoke=config.getoption("--bench-smoke") or bool(config.getoption("benchmark_disable")),
            seconds=config.getoption("--bench-seconds"),
            max_case_seconds=config.getoption("--bench-max-case-seconds"),
            min_rounds=config.getoption("benchmark_min_rounds"),
            records_path=config.getoption("--bench-records"),
        )
    return config.stash[_SETTINGS]


def pytest_configure(config):
    threads = config.getoption("--bench-threads") or (1 if settings(config).smoke else None)
    if threads is not None:
        torch.set_num_threads(threads)
    records_path = settings(config).records_path
    if records_path is not None:
        report.append_environment(records_path, report.environment(settings(config).device.type, _command(config)))
    # Every (peer, op, shape) is its own static-shape compile of a shared peer function.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        config = settings(metafunc.config)
        shapes = harness.bench_shapes(config.device.type, config.smoke)
        metafunc.parametrize("shape", shapes, ids=[shape.name for shape in shapes])


@pytest.fixture(scope="session")
def bench_settings(request) -> harness.Settings:
    return settings(request.config)


def _command(config) -> str:
    return " ".join(["pytest", *config.invocation_params.args])


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["lowres"] = report.environment(settings(config).device.type, _command(config))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not harness.RECORDS:
        return
    env = report.environment(settings(config).device.type, _command(config))
    terminalreporter.section("lowres: peer time / our time (same run)")
    if report.headline_shape(harness.RECORDS) is not None:
        for line in report.headline_table(harness.RECORDS, env) + [""] + report.targets_table(
            report.evaluate_targets(harness.RECORDS, env["device_type"])
        ):
            terminalreporter.write_line(line)
    for line in report.training_table(harness.RECORDS):
        terminalreporter.write_line(line)
    if config.getoption("--bench-save"):
        for path in report.write_results(config.getoption("--bench-results-dir"), env, harness.RECORDS):
            terminalreporter.write_line(f"wrote {path}")
    elif report.headline_shape(harness.RECORDS) is None:
        terminalreporter.write_line(f"{len(harness.RECORDS)} cases timed; --bench-save writes the full tables")
