"""Shared test set-up: data root, thread limits, the smoke book built once per session.

- ``KNEELIB_DATA`` defaults to ``../shared/data`` beside the checkout when unset and
  present (CI sets it explicitly).
- Numeric libraries use one thread (the test machine has two cores shared by many jobs).
- Notebook tests run first, then the book build, then the browser check, so the book
  fixture reuses the notebooks the notebook tests executed instead of running them again.
- Under ``CI=true`` a test marked ``realdata`` that skips (data absent, an optional
  import missing, any ``pytest.skip``) FAILS instead: CI must run the real-data checks
  (:func:`pytest_runtest_makereport`).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_shared_data = REPO_ROOT.parent / "shared" / "data"
if "KNEELIB_DATA" not in os.environ and _shared_data.is_dir():
    os.environ["KNEELIB_DATA"] = str(_shared_data)

try:  # keep torch (when a test imports it) on one thread as well
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency
    pass

def running_in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``true``, ``1``, ``yes``; any case)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped ``realdata`` test is reported as failed, with the skip reason."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and running_in_ci() and item.get_closest_marker("realdata") is not None \
            and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"CI=true: real-data test {item.nodeid} must run, but it skipped ({reason}); "
                           f"set KNEELIB_DATA to the public data (KNEELIB_DATA={os.environ.get('KNEELIB_DATA')})")


# Tests that need the session's smoke book run after the notebook tests that feed it.
_ORDER = {"notebook": 0, "book": 1, "browser": 2}


def pytest_collection_modifyitems(config, items):
    """Run notebook tests, then book tests, then browser tests, after everything else."""
    def rank(item):
        for name, position in _ORDER.items():
            if item.get_closest_marker(name) is not None:
                return 1 + position
        return 0

    items.sort(key=rank)  # stable: keeps file order within each group


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout under test."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """``$KNEELIB_DATA`` when it holds the public real data sets, else skip."""
    from kneelib.config import data_root

    root = data_root()
    if not (root / "chen_kl_radiographs").is_dir():
        if running_in_ci():
            pytest.fail(f"CI: KNEELIB_DATA={root} lacks the public real data sets")
        pytest.skip(f"public real data not found under KNEELIB_DATA={root}")
    return root


@pytest.fixture(scope="session")
def smoke_book_dir(tmp_path_factory) -> Path:
    """A scratch copy of the book for this session (the user's book/ is never touched)."""
    return tmp_path_factory.mktemp("smoke_book")


@pytest.fixture(scope="session")
def built_book(smoke_book_dir) -> Path:
    """The book built at ``smoke`` parameters in :func:`smoke_book_dir`; its index.html.

    Notebooks the notebook tests already executed into ``<smoke_book_dir>/_executed``
    are reused; any other chapter is executed here.
    """
    from kneelib.runner import build_book

    return build_book(params="smoke", book_path=smoke_book_dir, progress=False,
                      reuse_executed=True)
