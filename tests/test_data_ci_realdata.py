"""Issue 9, item 13: under CI=true a real-data test that would skip fails instead (tests/conftest.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_INNER = '''
import pytest

pytestmark = pytest.mark.realdata


def test_needs_data():
    pytest.skip("real exam not found (set KNEELIB_DATA)")


@pytest.mark.skipif(True, reason="data folder absent")
def test_needs_data_too():
    pass


def test_needs_the_fixture(real_data_root):
    pass
'''

_OTHER = '''
import pytest


def test_optional_and_not_real_data():
    pytest.skip("an ordinary skip stays a skip")
'''


def _run(folder: Path, ci: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["KNEELIB_DATA"] = str(folder / "no_data_here")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(folder / "no_torch")  # the conftest's torch import is not under test: skip it
    if ci is not None:
        env["CI"] = ci
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr


def test_realdata_skips_fail_under_ci(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    realdata: needs the public real data\n")
    (tmp_path / "test_inner_realdata.py").write_text(_INNER)
    (tmp_path / "test_inner_other.py").write_text(_OTHER)
    (tmp_path / "no_torch" / "torch").mkdir(parents=True)
    (tmp_path / "no_torch" / "torch" / "__init__.py").write_text("raise ImportError('not needed here')\n")
    local = _run(tmp_path, None)
    assert "4 skipped" in local and "failed" not in local, local
    ci = _run(tmp_path, "true")
    # Skips in the test body fail; skips at set-up (skipif, the fixture) are reported as errors.
    assert "1 failed, 1 skipped, 2 errors" in ci, ci
    assert "CI=true: real-data test" in ci and "real exam not found" in ci
    assert "4 skipped" in _run(tmp_path, "false")
