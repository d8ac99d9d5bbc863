"""bench/profile.py, the profiler's workload: every op runs at a named benchmark shape."""

from __future__ import annotations

from . import profile


def test_profile_runs_every_op_at_a_named_shape(capsys):
    profile.main(["--shape", "tiny14_b2", "--device", "cpu", "--backend", "reference", "--calls", "1"])
    assert capsys.readouterr().out.count("1 forward+backward calls at tiny/14, batch 2, backend reference") == 3
