"""Benchmarks (``make bench``): collect ``bench_*.py`` files, set the data root.

Speed targets live here as pytest-benchmark measurements, never as timed tests.
``KNEELIB_DATA`` defaults to ``../shared/data`` beside the checkout when unset.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

_shared_data = REPO_ROOT.parent / "shared" / "data"
if "KNEELIB_DATA" not in os.environ and _shared_data.is_dir():
    os.environ["KNEELIB_DATA"] = str(_shared_data)


def pytest_collect_file(file_path: Path, parent):
    """Collect ``benchmarks/bench_*.py`` as test modules (pytest only looks for test_*.py)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
