"""Benchmarks (``make bench``): set the data root (``bench_*.py`` are collected via ``-o python_files``).

Speed targets live here as pytest-benchmark measurements, never as timed tests.
``KNEELIB_DATA`` defaults to ``../shared/data`` beside the checkout when unset.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_shared_data = REPO_ROOT.parent / "shared" / "data"
if "KNEELIB_DATA" not in os.environ and _shared_data.is_dir():
    os.environ["KNEELIB_DATA"] = str(_shared_data)
