"""Fixtures shared by the application tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data import write_toy_lite


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module: the tiny models are latency-bound, and on the small,
    shared CI machine two threads only contend (up to ~20x slower); one is also bitwise reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite_root(tmp_path_factory) -> Path:
    """A toy folder in LITE's layout (see test_data.write_toy_lite)."""
    return write_toy_lite(tmp_path_factory.mktemp("lite"))
