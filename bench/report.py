"""Turns the measured cases of one run into ratios, target checks, and bench/results/<device>.{md,json,png}.

Every ratio is peer time / our time from the same run (ours = the fastest of our backends), so
a noisy machine still compares fairly. Used at the end of `pytest bench/ --bench-save` (the
records in memory) and as `python -m bench.report RUN.json` on a pytest-benchmark JSON file
(`pytest bench/ --benchmark-json=RUN.json`), whose machine_info holds the environment, or on the
JSON lines that `pytest bench/ --bench-records=RUN.jsonl` appends case by case.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .harness import FLOOR, FORWARD, FORWARD_BACKWARD, HEADLINE_BATCH, HEADLINE_MODEL, NAIVE, OURS, STOCK, Record

TRAINING_STEP = "training_step"
BASELINE_FREE, WITH_BASELINES = "adaptformer", "adaptformer+tokenization+domain_attention"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device_type: str, command: str = "") -> dict:
    import torch

    import lowres_kernels as lk

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    try:
        commit = subprocess.run(
            # "-dirty" marks a run of uncommitted changes
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    gpu = torch.cuda.get_device_name() if device_type == "cuda" else None
    return {
        "device_type": device_type,
        "device": gpu or cpu_model(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # Other processes on a shared machine skew absolute times (the same-run ratios less so).
        "load_average": [round(load, 1) for load in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "lowres_kernels": lk.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
    }


def device_slug(env: dict) -> str:
    """bench/results/ file stem: 'cpu-amd-epyc', 'cuda-nvidia-h100-80gb-hbm3'."""
    name = env["cpu"] if env["device_type"] == "cpu" else env["device"]
    name = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$|\b\d+-core\b", "", name, flags=re.IGNORECASE)
    return f"{env['device_type']}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass(frozen=True)
class Row:
    """One peer of one (op, shape, pass), with ratios to the fastest of our backends."""

    record: Record
    time_ratio: Optional[float]  # peer time / our time
    memory_ratio: Optional[float]  # peer peak bytes / our peak bytes


def _timed(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.median_s is not None and r.op != TRAINING_STEP]


def fastest_ours(records: Iterable[Record]) -> Optional[Record]:
    ours = [r for r in records if r.kind == OURS and r.median_s is not None]
    return min(ours, key=lambda r: r.median_s) if ours else None


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def group_rows(records: Iterable[Record]) -> dict[tuple[str, str, str], list[Row]]:
    """(op, shape, pass) -> rows in measurement order, each with its ratios to ours."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for record in _timed(records):
        groups.setdefault((record.op, record.shape, record.pass_name), []).append(record)
    table = {}
    for key, members in groups.items():
        ours = fastest_ours(members)
        table[key] = [
            Row(
                r,
                _ratio(r.median_s, ours.median_s) if ours else None,
                _ratio(r.peak_bytes, ours.peak_bytes) if ours else None,
            )
            for r in members
        ]
    return table


def _pick(rows: list[Row], kind: str, peer: Optional[str] = None) -> list[Row]:
    return [row for row in rows if row.record.kind == kind and (peer is None or row.record.peer == peer)]


@dataclass(frozen=True)
class Target:
    description: str
    op: str
    metric: str  # "naive" | "stock" | "floor" | "memory" | "overhead"
    bound: float
    at_most: bool  # the measured value must be <= bound (else >=)


CPU_TARGETS = [
    *(
        target
        for op in ("subkernel_tokenize(max)", "subkernel_tokenize(avg,blend=0.5)")
        for target in (
            Target("speed-up over the naive oracle", op, "naive", 40.0, False),
            Target("speed-up over the best stock-PyTorch peer", op, "stock", 1.5, False),
            Target("time / GEMM floor", op, "floor", 1.5, True),
            Target("peak memory / naive", op, "memory", 1 / 20, True),
        )
    ),
    Target("speed-up over the naive oracle", "domain_attention", "naive", 15.0, False),
    Target("speed-up over the best stock-PyTorch peer", "domain_attention", "stock", 1.5, False),
    Target("time / GEMM floor", "domain_attention", "floor", 1.5, True),
    Target("peak memory / naive", "domain_attention", "memory", 1 / 20, True),
]
CUDA_TARGETS = [
    Target("speed-up over the best stock-PyTorch/compile peer", "domain_attention", "stock", 2.0, False),
    Target("time / GEMM floor", "subkernel_tokenize(max)", "floor", 1.3, True),
    Target("time / GEMM floor", "subkernel_tokenize(avg,blend=0.5)", "floor", 1.3, True),
    Target("ViT-H/14 training-step overhead of the baselines (%)", TRAINING_STEP, "overhead", 5.0, True),
]


def headline_shape(records: Iterable[Record]) -> Optional[str]:
    for record in records:
        if record.label == f"{HEADLINE_MODEL}, batch {HEADLINE_BATCH}":
            return record.shape
    return None


def training_overheads(records: Iterable[Record]) -> list[dict]:
    """Per model: the training step without and with the two baselines, and the overhead in percent."""
    steps: dict[str, dict[str, Record]] = {}
    for record in records:
        if record.op == TRAINING_STEP and record.median_s is not None:
            steps.setdefault(record.label, {})[record.peer] = record
    out = []
    for label, peers in steps.items():
        plain, full = peers.get(BASELINE_FREE), peers.get(WITH_BASELINES)
        if plain is None or full is None:
            continue
        out.append({
            "label": label,
            "without_s": plain.median_s,
            "with_s": full.median_s,
            "overhead_percent": 100.0 * (full.median_s / plain.median_s - 1.0),
        })
    return out


def measure_target(target: Target, records: list[Record]) -> tuple[Optional[float], str]:
    """The measured value of a target at the headline shape (forward+backward) and the peer it came from."""
    if target.metric == "overhead":
        for step in training_overheads(records):
            if step["label"].startswith(HEADLINE_MODEL):
                return step["overhead_percent"], step["label"]
        return None, "no ViT-H/14 training step measured"
    shape = headline_shape(records)
    rows = group_rows(records).get((target.op, shape, FORWARD_BACKWARD), [])
    if not _pick(rows, OURS):
        return None, "not measured"
    if target.metric == "naive":
        naive = _pick(rows, NAIVE)
        return (naive[0].time_ratio, "naive") if naive else (None, "naive not measured")
    if target.metric == "stock":
        stock = _pick(rows, STOCK)
        if not stock:
            return None, "no stock peer measured"
        best = min(stock, key=lambda row: row.time_ratio)
        return best.time_ratio, best.record.peer
    if target.metric == "floor":
        floor = _pick(rows, FLOOR, "floor-gemm")
        return (1.0 / floor[0].time_ratio, "floor-gemm") if floor else (None, "floor not measured")
    naive = _pick(rows, NAIVE)
    return (1.0 / naive[0].memory_ratio, "naive") if naive and naive[0].memory_ratio else (None, "naive not measured")


def evaluate_targets(records: list[Record], device_type: str) -> list[dict]:
    targets = CUDA_TARGETS if device_type == "cuda" else CPU_TARGETS
    results = []
    for target in targets:
        value, source = measure_target(target, records)
        met = None if value is None else (value <= target.bound if target.at_most else value >= target.bound)
        results.append({
            "op": target.op, "target": target.description, "bound": target.bound, "at_most": target.at_most,
            "measured": value, "against": source, "met": met,
        })
    return results


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def format_bytes(count: Optional[int]) -> str:
    if count is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def format_ratio(ratio: Optional[float]) -> str:
    if ratio is None or math.isnan(ratio):
        return "—"
    return f"{ratio:.0f}×" if ratio >= 100 else f"{ratio:.2f}×"


def _format_measured(result: dict) -> str:
    value = result["measured"]
    if value is None:
        return "not measured"
    if result["target"].endswith("(%)"):
        return f"{value:+.1f} %"
    if result["target"].startswith("peak memory"):
        return f"1/{1 / value:.0f}" if value > 0 else "0"
    return f"{value:.2f}×"


def _format_bound(result: dict) -> str:
    bound, sign = result["bound"], "≤" if result["at_most"] else "≥"
    if result["target"].endswith("(%)"):
        return f"{sign} {bound:g} %"
    if result["target"].startswith("peak memory"):
        return f"{sign} 1/{1 / bound:.0f}"
    return f"{sign} {bound:g}×"


def targets_table(results: list[dict]) -> list[str]:
    lines = ["| op | target | required | measured | against | met |", "|---|---|---|---|---|---|"]
    for result in results:
        met = {True: "yes", False: "**no**", None: "—"}[result["met"]]
        lines.append(
            f"| {result['op']} | {result['target']} | {_format_bound(result)} | {_format_measured(result)} "
            f"| {result['against']} | {met} |"
        )
    return lines


def op_tables(records: list[Record]) -> list[str]:
    """Per op and shape: every peer's forward and forward+backward time, ratio to ours, and peak memory."""
    table = group_rows(records)
    lines: list[str] = []
    ops = list(dict.fromkeys(r.op for r in _timed(records)))
    for op in ops:
        lines += [f"### {op}", ""]
        shapes = list(dict.fromkeys((r.shape, r.label) for r in _timed(records) if r.op == op))
        for shape, label in shapes:
            forward = {row.record.peer: row for row in table.get((op, shape, FORWARD), [])}
            both = {row.record.peer: row for row in table.get((op, shape, FORWARD_BACKWARD), [])}
            lines += [
                f"**{label}**", "",
                "| peer | forward | peer/ours | forward+backward | peer/ours | peak memory fwd+bwd | peer/ours |",
                "|---|---|---|---|---|---|---|",
            ]
            for peer in dict.fromkeys(list(forward) + list(both)):
                f, b = forward.get(peer), both.get(peer)
                lines.append(
                    f"| {peer} | {format_seconds(f and f.record.median_s)} | {format_ratio(f and f.time_ratio)} "
                    f"| {format_seconds(b and b.record.median_s)} | {format_ratio(b and b.time_ratio)} "
                    f"| {format_bytes(b and b.record.peak_bytes)} | {format_ratio(b and b.memory_ratio)} |"
                )
            lines.append("")
    return lines


def training_table(records: list[Record]) -> list[str]:
    steps = training_overheads(records)
    if not steps:
        return []
    lines = [
        "| model | AdaptFormer step | + tokenization + domain attention | overhead |",
        "|---|---|---|---|",
    ]
    for step in steps:
        lines.append(
            f"| {step['label']} | {format_seconds(step['without_s'])} | {format_seconds(step['with_s'])} "
            f"| {step['overhead_percent']:+.1f} % |"
        )
    return lines


def headline_table(records: list[Record], env: dict) -> list[str]:
    """The README's table: the headline shape, forward+backward, ours against every peer."""
    shape = headline_shape(records)
    table = group_rows(records)
    lines = [
        f"{HEADLINE_MODEL}, batch {HEADLINE_BATCH}, forward+backward, on {env['device']} "
        f"({env['cpu_threads']} threads; torch {env['torch']}, triton {env['triton']}); "
        "speed-ups are peer time / our time; the floor column is our time / the GEMM floor's:",
        "",
        "| op | ours | vs naive | vs best stock PyTorch | ours / GEMM floor | peak memory ours (naive) |",
        "|---|---|---|---|---|---|",
    ]
    for op in dict.fromkeys(r.op for r in _timed(records)):
        rows = table.get((op, shape, FORWARD_BACKWARD), [])
        ours = fastest_ours(row.record for row in rows)
        if ours is None:
            continue
        naive, stock, floor = _pick(rows, NAIVE), _pick(rows, STOCK), _pick(rows, FLOOR, "floor-gemm")
        best = min(stock, key=lambda row: row.time_ratio) if stock else None
        lines.append(
            f"| {op} | {format_seconds(ours.median_s)} ({ours.peer}) "
            f"| {format_ratio(naive[0].time_ratio) if naive else '—'} "
            f"| {format_ratio(best.time_ratio) + ' (' + best.record.peer + ')' if best else '—'} "
            f"| {format_ratio(1 / floor[0].time_ratio) if floor else '—'} "
            f"| {format_bytes(ours.peak_bytes)} ({format_bytes(naive[0].record.peak_bytes) if naive else '—'}) |"
        )
    return lines


MEMORY_METHOD = {
    "cpu": "the running sum of the CPU allocator's alloc/free events recorded by `torch.profiler` "
    "(`profile_memory=True`) during one call, above what was live before it; BLAS/oneDNN scratch "
    "buffers that bypass the torch allocator are not seen",
    "cuda": "`torch.cuda.max_memory_allocated` during one call, above `memory_allocated` before it",
}


def render_markdown(env: dict, records: list[Record]) -> str:
    lines = [
        f"# lowres benchmarks: {env['device']}",
        "",
        "| | |",
        "|---|---|",
        f"| device | {env['device']} ({env['device_type']}) |",
        f"| CPU | {env['cpu']}, {env['cpu_threads']} torch threads, {env['cpus_allowed']} CPUs allowed, "
        f"load average (1/5/15 min) {env.get('load_average')} |",
        f"| versions | torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, "
        f"lowres_kernels {env['lowres_kernels']}, Python {env['python']} |",
        f"| commit, date | {env['commit']}, {env['date']} |",
        f"| command | `{env['command']}` |",
        "",
        "Times are medians over pytest-benchmark rounds. Each ratio is peer time / our time in the same run "
        "(ours: the fastest of our backends), so above 1 means we are faster; for the floor peers, below 1 is "
        "the unavoidable work's share. Forward runs with gradients enabled, as in training; forward+backward "
        "takes the gradients of the trainable inputs (tokenization: the logits; domain attention: v, maps, "
        f"mix_logits). Peak memory: {MEMORY_METHOD[env['device_type']]}.",
        "",
    ]
    if headline_shape(records) is not None:
        lines += ["## Headline", ""] + headline_table(records, env) + [""]
        lines += ["## Targets", "", f"At {HEADLINE_MODEL}, batch {HEADLINE_BATCH}, forward+backward.", ""]
        lines += targets_table(evaluate_targets(records, env["device_type"])) + [""]
    training = training_table(records)
    if training:
        lines += ["## End-to-end training step", "", *training, ""]
    lines += ["## Every op, shape and peer", ""] + op_tables(records)
    return "\n".join(lines).rstrip() + "\n"


def plot(records: list[Record], path: Path, env: dict) -> Optional[Path]:
    """Peer/ours time ratios at the headline shape (forward+backward), log scale."""
    shape = headline_shape(records)
    table = group_rows(records)
    groups = [(op, table.get((op, shape, FORWARD_BACKWARD), [])) for op in dict.fromkeys(r.op for r in _timed(records))]
    groups = [(op, [row for row in rows if row.record.kind != OURS and row.time_ratio]) for op, rows in groups]
    groups = [(op, rows) for op, rows in groups if rows]
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    colors = {NAIVE: "tab:red", STOCK: "tab:blue", FLOOR: "tab:gray"}
    for ax, (op, rows) in zip(axes[0], groups):
        ax.barh([row.record.peer for row in rows], [row.time_ratio for row in rows],
                color=[colors[row.record.kind] for row in rows])
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(op, fontsize=10)
        ax.set_xlabel("peer time / our time")
        ax.invert_yaxis()
    fig.suptitle(f"{HEADLINE_MODEL}, batch {HEADLINE_BATCH}, forward+backward: {env['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(results_dir: Path, env: dict, records: list[Record]) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / device_slug(env)
    markdown = stem.with_suffix(".md")
    markdown.write_text(render_markdown(env, records))
    payload = {
        "environment": env,
        "targets": evaluate_targets(records, env["device_type"]) if headline_shape(records) else [],
        "training_step": training_overheads(records),
        "records": [
            {**row.record.to_dict(), "ratio_to_ours": row.time_ratio, "memory_ratio_to_ours": row.memory_ratio}
            for rows in group_rows(records).values() for row in rows
        ] + [r.to_dict() for r in records if r.op == TRAINING_STEP],
    }
    data = stem.with_suffix(".json")
    data.write_text(json.dumps(payload, indent=1) + "\n")
    written = [markdown, data]
    figure = plot(records, stem.with_suffix(".png"), env)
    return written + ([figure] if figure else [])


def records_from_benchmark_json(payload: dict) -> list[Record]:
    """Our records back from a pytest-benchmark JSON file (fields in extra_info, times in stats)."""
    fields = set(Record.__dataclass_fields__)
    records = []
    for bench in payload.get("benchmarks", []):
        info = {k: v for k, v in bench.get("extra_info", {}).items() if k in fields}
        if "op" not in info:
            continue  # not one of ours
        stats = bench["stats"]
        records.append(Record(**{**info, "median_s": stats["median"], "min_s": stats["min"],
                                 "iqr_s": stats["iqr"], "rounds": stats["rounds"]}))
    return records


def append_environment(path: Path, env: dict) -> None:
    """Starts (or continues) a records file: an environment line, then `{"record": ...}` lines."""
    with open(path, "a") as records:
        records.write(json.dumps({"environment": env}) + "\n")


def records_from_jsonl(path: Path) -> tuple[Optional[dict], list[Record]]:
    """The first environment and every record of a `--bench-records` file (several runs may append to it)."""
    env, records = None, []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the last line of a run killed while writing it
            raise
        if "environment" in entry:
            env = env or entry["environment"]
        else:
            records.append(Record(**entry["record"]))
    return env, records


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path,
                        help="written by pytest bench/ --benchmark-json=FILE, or --bench-records=FILE.jsonl")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.run.suffix == ".jsonl":
        env, records = records_from_jsonl(args.run)
    else:
        payload = json.loads(args.run.read_text())
        env, records = payload.get("machine_info", {}).get("lowres"), records_from_benchmark_json(payload)
    if env is None:
        sys.exit(f"{args.run}: no lowres environment; was it written by pytest bench/?")
    for path in write_results(args.out, env, records):
        print(path)


if __name__ == "__main__":
    main()
