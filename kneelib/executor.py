"""One executor for per-subject work: joblib on this machine, dask.distributed on a cluster.

Per-subject stages (DICOM -> NIfTI, registration, crops, features, segmentation inference,
biomarkers) are pure functions of one subject that write content-addressed cache entries
(:mod:`kneelib.cache`). :func:`map_tasks` runs such a function over subjects and returns the
results in input order:

- ``n_jobs=1``: in this process (debuggable, no start-up cost);
- otherwise joblib's ``loky`` processes on this machine (the default, ``n_jobs`` = all cores);
- with a scheduler -- ``scheduler="tcp://host:8786"``, a :class:`distributed.Client`, a cluster
  object (``LocalCluster``, ``dask_jobqueue.SLURMCluster``), or the environment variable
  ``KNEELIB_DASK_SCHEDULER`` -- the same tasks go to that dask.distributed cluster.

The code of a stage does not change between the three. Workers must be able to import
``kneelib`` and read/write the same paths (a shared file system for the data and
``$KNEELIB_CACHE``). A worker that dies is replaced and its tasks are rerun by dask; since
every task writes its entry to a temporary name and renames it, a rerun of the whole map
recomputes only the entries that are missing.

Examples
--------
On one machine, a dask ``LocalCluster`` (what the tests use)::

    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        paths = map_tasks(convert, folders, scheduler=cluster)

On SLURM with dask-jobqueue (``pip install dask-jobqueue``)::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(cores=8, processes=8, memory="32GB", walltime="04:00:00")
    cluster.scale(jobs=20)  # 160 workers
    print(cluster.scheduler_address)  # export KNEELIB_DASK_SCHEDULER=<this> for the CLI
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable

__all__ = ["SCHEDULER_ENV", "scheduler_from", "resolve_n_jobs", "single_threaded", "map_tasks"]

#: Environment variable naming a dask.distributed scheduler (``tcp://host:8786``).
SCHEDULER_ENV = "KNEELIB_DASK_SCHEDULER"


def scheduler_from(scheduler: Any = None) -> Any:
    """The scheduler to use: ``scheduler`` when given, else ``$KNEELIB_DASK_SCHEDULER``, else None.

    An empty string or ``"local"`` means no scheduler (joblib on this machine), so a job
    script can override the environment with ``--scheduler local``.
    """
    if scheduler is None:
        scheduler = os.environ.get(SCHEDULER_ENV) or None
    if isinstance(scheduler, str) and scheduler.strip().lower() in ("", "local", "none"):
        return None
    return scheduler


def resolve_n_jobs(n_jobs: int | None, n_tasks: int) -> int:
    """Workers to use: ``n_jobs`` (None or -1: all cores), at most one per task, at least 1."""
    if n_jobs is None or n_jobs < 0:
        n_jobs = os.cpu_count() or 1
    return max(1, min(int(n_jobs), max(n_tasks, 1)))


@contextmanager
def single_threaded():
    """torch and every SimpleITK filter on one thread inside the block, restored after.

    What a task runs inside when tasks are spread over processes instead: two workers on two
    cores do not oversubscribe, small convolutions scale poorly over threads, and N4's internal
    B-spline filters (which follow SimpleITK's global default, not the filter's own thread
    count) run about 1.6 times faster than with every core on a small window. Results do not
    depend on the number of workers, since every task runs on one thread wherever it runs.
    """
    import SimpleITK as sitk
    import torch

    torch_threads, itk_threads = torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)


def _progress_bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)


def _map_dask(fn: Callable, items: list, scheduler: Any, bar, retries: int) -> list:
    from distributed import Client, as_completed

    own_client = not isinstance(scheduler, Client)
    if own_client:
        address = getattr(scheduler, "scheduler_address", scheduler)  # a cluster object or an address
        client = Client(address, set_as_default=False)
    else:
        client = scheduler
    try:
        futures = client.map(fn, items, pure=False, retries=retries)
        for _future in as_completed(futures, loop=client.loop):
            bar.update()
        return client.gather(futures)
    finally:
        if own_client:
            client.close()


def map_tasks(fn: Callable[[Any], Any], items: Iterable[Any], *, n_jobs: int | None = None, scheduler: Any = None,
              progress: bool = True, desc: str = "tasks", unit: str = "subject", backend: str = "loky",
              retries: int = 0) -> list:
    """``[fn(item) for item in items]``, run in parallel on this machine or on a dask cluster.

    Parameters
    ----------
    fn : callable
        A module-level function of one item (picklable; for dask, importable by the workers).
        It should be idempotent: write its result to the cache atomically and return something
        small (a path, a key, a summary), not the volume itself, when it runs on a cluster.
    items : iterable
        One item per task (a subject, a series folder, a mapping of keyword arguments...).
    n_jobs : int, optional
        Local workers (None or -1: all cores; 1: in this process). Ignored with a scheduler.
    scheduler : str, Client or cluster, optional
        A dask.distributed scheduler address (``"tcp://host:8786"``), a ``Client`` or a cluster
        object; default ``$KNEELIB_DASK_SCHEDULER``; ``"local"`` forces joblib.
    progress : bool
        A tqdm bar over finished tasks.
    desc, unit : str
        Its label and unit.
    backend : str
        joblib backend ("loky" processes; "threading" when the work releases the GIL and the
        tasks are too small to pay for process start-up).
    retries : int
        dask only: times a task that raised is retried (a task on a worker that died is
        rescheduled by dask regardless).

    Returns
    -------
    list
        The results in the order of ``items``.

    Raises
    ------
    Exception
        The first exception a task raised (after ``retries``), re-raised here.
    """
    items = list(items)
    bar = _progress_bar(len(items), desc, unit, progress)
    try:
        target = scheduler_from(scheduler)
        if target is not None:
            return _map_dask(fn, items, target, bar, retries)
        workers = resolve_n_jobs(n_jobs, len(items))
        if workers == 1:
            results = []
            for item in items:
                results.append(fn(item))
                bar.update()
            return results
        import warnings

        from joblib import Parallel, delayed

        results = []
        with warnings.catch_warnings():
            # loky retires a worker whose memory grew by a few hundred MB after a task (e.g. one that
            # trained a model) and starts a fresh one; no task is lost, so its notice is noise.
            warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor",
                                    category=UserWarning)
            for result in Parallel(n_jobs=workers, backend=backend, return_as="generator")(delayed(fn)(i) for i in items):
                results.append(result)
                bar.update()
        return results
    finally:
        bar.close()

