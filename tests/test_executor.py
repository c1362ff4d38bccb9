"""The executor (joblib here, dask.distributed on a cluster) and resumable per-series caching.

The smoke cohort's preprocessing (every MRI series DICOM -> NIfTI) runs on a dask LocalCluster
with 2 workers and gives exactly the entries of the joblib run, and the cohort rendered there is
the same bytes; a worker killed in the middle of
writing an entry is replaced, its task rerun, and no entry is corrupt; an interrupted run is
resumed by computing only the missing entries.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from kneelib import cache
from kneelib.data.cache import cache_series_volumes, load_volume, mri_series_folders
from kneelib.data.image_index import read_image_index
from kneelib.executor import SCHEDULER_ENV, map_tasks, resolve_n_jobs, scheduler_from

# Test tasks travel to dask workers by value (the workers cannot import this test module).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x):
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    from kneelib.synth.cohort import generate_cohort

    return generate_cohort("smoke", out_dir=tmp_path_factory.mktemp("cohort") / "smoke", seed=0, n_subjects=2,
                           n_workers=1, progress=False)


@pytest.fixture(scope="module")
def smoke_series(smoke_root) -> list[Path]:
    index = read_image_index(smoke_root)
    baseline = {Path(p) for p in index.table.loc[index.table["VISIT"] == 0, "path"]}
    folders = [f for f in mri_series_folders(index) if f in baseline]
    assert len(folders) == 12  # 2 subjects x 6 MRI series at baseline (the book's series set); no radiographs
    return folders


@pytest.fixture(scope="module")
def local_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def joblib_run(smoke_series, tmp_path_factory):
    out = tmp_path_factory.mktemp("joblib_volumes")
    rows = cache_series_volumes(smoke_series, cache_dir=out, n_jobs=2, progress=False)
    assert all(r["error"] == "" for r in rows), rows
    return out, rows


def _entries(folder: Path) -> dict[str, tuple]:
    """Key -> (array, affine, sidecar text) of every complete entry; fails on a corrupt one."""
    entries = {}
    for path in sorted(folder.glob("*/*.nii.gz")):
        if path.name.startswith("."):
            continue
        volume = load_volume(path)  # raises on a truncated or corrupt file
        entries[path.name] = (volume.array, volume.affine, path.with_name(path.name[:-7] + ".json").read_text())
    return entries


def _assert_same_entries(a: Path, b: Path) -> None:
    first, second = _entries(a), _entries(b)
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_array_equal(first[key][0], second[key][0])
        np.testing.assert_array_equal(first[key][1], second[key][1])
        assert first[key][2] == second[key][2]


def test_map_tasks_keeps_order_in_every_mode():
    items = list(range(7))
    expected = [x * x for x in items]
    assert map_tasks(_square, items, n_jobs=1, progress=False) == expected
    assert map_tasks(_square, items, n_jobs=2, progress=False) == expected
    assert map_tasks(_square, items, n_jobs=2, backend="threading", progress=False) == expected
    assert map_tasks(_square, [], progress=False) == []
    with pytest.raises(ValueError, match="three"):
        map_tasks(_fail_on_three, items, n_jobs=1, progress=False)
    assert resolve_n_jobs(8, 3) == 3 and resolve_n_jobs(None, 1) == 1 and resolve_n_jobs(1, 0) == 1


def test_scheduler_comes_from_argument_or_environment(monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    assert scheduler_from(None) is None
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://10.0.0.1:8786")
    assert scheduler_from(None) == "tcp://10.0.0.1:8786"
    assert scheduler_from("tcp://other:8786") == "tcp://other:8786"
    assert scheduler_from("local") is None  # --scheduler local overrides the environment


def test_dask_local_cluster_gives_the_joblib_entries(smoke_series, joblib_run, local_cluster, tmp_path):
    joblib_dir, joblib_rows = joblib_run
    rows = cache_series_volumes(smoke_series, cache_dir=tmp_path, scheduler=local_cluster, progress=False)
    assert [r["folder"] for r in rows] == [r["folder"] for r in joblib_rows]  # input order
    assert [Path(r["path"]).name for r in rows] == [Path(r["path"]).name for r in joblib_rows]
    _assert_same_entries(joblib_dir, tmp_path)
    # through the environment variable, as on a cluster; the second run finds everything cached
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*")}
    os.environ[SCHEDULER_ENV] = local_cluster.scheduler_address
    try:
        assert map_tasks(_square, [1, 2, 3], progress=False) == [1, 4, 9]
        again = cache_series_volumes(smoke_series, cache_dir=tmp_path, progress=False)
    finally:
        del os.environ[SCHEDULER_ENV]
    assert [r["path"] for r in again] == [r["path"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*")} == before


def test_synthetic_cohort_rendered_on_a_local_cluster_is_the_same_bytes(smoke_root, local_cluster, tmp_path):
    """Synthesis is per-subject work too: the cluster's workers write the files of the in-process run."""
    import hashlib

    from kneelib.synth.cohort import generate_cohort

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    on_cluster = generate_cohort("smoke", out_dir=tmp_path / "smoke", seed=0, n_subjects=2,
                                 scheduler=local_cluster, progress=False)
    assert digest(on_cluster) == digest(smoke_root)
    assert len(digest(on_cluster)) > 20


def test_spherical_maps_computed_on_a_local_cluster_equal_the_in_process_ones(smoke_root, local_cluster, tmp_path):
    import pandas as pd

    from kneelib.qmri.cohort_maps import cohort_spherical_maps

    truth = pd.read_csv(smoke_root / "ground_truth" / "knees.csv", dtype={"participant_id": str})
    knees = truth[(truth.side == "R") & (truth.visit_month == 0)][["participant_id", "visit_month"]].head(1)
    here, here_failures = cohort_spherical_maps(smoke_root, knees, cache_dir=tmp_path / "here", t2=False)
    there, there_failures = cohort_spherical_maps(smoke_root, knees, cache_dir=tmp_path / "there", t2=False,
                                                  scheduler=local_cluster)
    assert here_failures == there_failures == [] and list(here) == list(there) and len(here) == 1
    one, other = next(iter(here.values())), next(iter(there.values()))
    assert other.seconds > 0  # computed by a worker, then read from the cache here
    for bone, maps in one.biomarkers.bones.items():
        for name, values in maps.maps.items():
            np.testing.assert_array_equal(values, other.biomarkers.bones[bone].maps[name])


def _killed_while_writing(folder: str, *, cache_dir: str, marker: str) -> str:
    """Series task whose first call kills its worker process (SIGKILL) half-way through writing."""
    from kneelib.data import cache as volume_cache

    import threading

    try:  # exactly one call of all workers and threads creates the marker (O_EXCL), so one writer dies
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return str(volume_cache.cached_series_path(folder, cache_dir=cache_dir))
    os.write(descriptor, str(os.getpid()).encode())
    os.close(descriptor)
    killer, save = threading.get_ident(), volume_cache.nib.save

    def half_write(image, filename):
        if threading.get_ident() != killer:  # another thread of this worker writes normally
            return save(image, filename)
        Path(filename).write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 4096)  # the start of a gzip file
        os.kill(os.getpid(), signal.SIGKILL)

    volume_cache.nib.save = half_write  # only in this worker, which dies
    return str(volume_cache.cached_series_path(folder, cache_dir=cache_dir))


def test_a_killed_worker_loses_nothing_and_leaves_no_corrupt_entry(smoke_series, joblib_run, local_cluster,
                                                                    tmp_path):
    import functools

    joblib_dir, _ = joblib_run
    marker = tmp_path / "killed.pid"
    out = tmp_path / "volumes"
    task = functools.partial(_killed_while_writing, cache_dir=str(out), marker=str(marker))
    paths = map_tasks(task, [str(f) for f in smoke_series], scheduler=local_cluster, progress=False)
    assert marker.is_file(), "no worker was killed"
    assert len(paths) == len(smoke_series) and all(Path(p).is_file() for p in paths)
    _assert_same_entries(joblib_dir, out)  # every entry complete and equal to the joblib run
    # the killed worker left its temporary file (and one of its other thread's, if that was writing
    # too): listed as partial, removed by prune once stale
    entries = cache.list_entries(tmp_path, areas=["volumes"])
    partial = [e for e in entries if e.partial]
    killed_pid = marker.read_text()
    assert partial and all(e.paths[0].name.startswith(".") and f".{killed_pid}." in e.paths[0].name for e in partial)
    later = max(e.modified for e in partial) + 2 * 3600
    assert cache.select_entries(entries, now=min(e.modified for e in partial) + 60) == []  # may be a live writer's
    assert cache.select_entries(entries, now=later) == partial
    cache.prune(cache.select_entries(entries, now=later))
    assert not any(e.partial for e in cache.list_entries(tmp_path))
    assert len(cache.list_entries(tmp_path, areas=["volumes"])) == len(smoke_series)


def _interrupt_at(folder: str, *, cache_dir: str, stop: str) -> str:
    from kneelib.data.cache import cached_series_path

    if folder == stop:
        raise KeyboardInterrupt("run interrupted")
    return str(cached_series_path(folder, cache_dir=cache_dir))


def test_an_interrupted_run_resumes_computing_only_the_missing_entries(smoke_series, joblib_run, tmp_path):
    import functools

    joblib_dir, _ = joblib_run
    folders = [str(f) for f in smoke_series]
    task = functools.partial(_interrupt_at, cache_dir=str(tmp_path), stop=folders[5])
    with pytest.raises(KeyboardInterrupt):
        map_tasks(task, folders, n_jobs=1, progress=False)
    done = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*.nii.gz")}
    assert len(done) == 5
    rows = cache_series_volumes(folders, cache_dir=tmp_path, n_jobs=1, progress=False)
    assert all(r["error"] == "" for r in rows)
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the first five were not rewritten
    _assert_same_entries(joblib_dir, tmp_path)


def test_unreadable_series_is_reported_not_fatal(tmp_path):
    empty = tmp_path / "empty_series"
    empty.mkdir()
    rows = cache_series_volumes([empty], cache_dir=tmp_path / "v", n_jobs=1, progress=False)
    assert rows[0]["path"] == "" and str(empty) in rows[0]["folder"] and rows[0]["error"]


def test_cli_volumes_command(smoke_root, tmp_path, capsys):
    from kneelib.cli import main

    assert main(["volumes", str(smoke_root), "--series", "SAG_3D_DESS_.*", "--workers", "1",
                 "--cache-dir", str(tmp_path), "--scheduler", "local"]) == 0
    assert "4 of 4 series cached" in capsys.readouterr().out  # 2 subjects x 2 visits x right DESS (book's set)
    assert len(list(tmp_path.glob("*/*.nii.gz"))) == 4


def _tree_digests(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
