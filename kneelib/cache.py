"""kneelib's writable cache: the one atomic writer, the entry layout, an inventory and pruning.

Everything kneelib writes lives under :func:`kneelib.config.cache_root` (``$KNEELIB_CACHE``), one
folder per *area*: ``synthetic/`` (generated cohorts), ``volumes/`` (DICOM series as NIfTI),
``slice_features/``, ``qmri_biomarkers/``, ``qmri_pain_maps/``, ``siamese_pain/`` (per-knee
features), ``models/`` (trained checkpoints) and ``figures/``. :data:`CATEGORIES` groups the areas.

Content-addressed entries
    A per-subject result is stored under ``<area>/<key[:2]>/<key><suffix>`` (:func:`entry_path`),
    ``key`` a SHA-256 of the input bytes, the parameters and the code version (:func:`content_key`);
    one entry may hold several files sharing the key (``key.nii.gz`` + ``key.json``). Files are
    written by :func:`atomic_write`: to a hidden temporary sibling, then :func:`os.replace`, so a
    killed worker leaves at most a hidden temporary file (listed as *partial*, removed by
    :func:`prune`) and never a half-written entry; a rerun recomputes exactly the missing keys.

Inventory (:func:`list_entries`, :func:`area_summary`)
    In a folder of two-hex-digit shards each key is one entry; elsewhere each child of an area
    (a cohort folder, a chapter's figure folder, a model file) is one entry. An entry's age is the
    time since its newest file was written (reads do not count: many file systems do not record
    them).

Keys of large inputs (:func:`stat_memoized`)
    Hashing the bytes of a knee's DICOM series on every read would cost more than reading the
    cached result. A content key computed once is remembered under a *stat signature* of its
    input files (absolute path, size and modification time of each, as ``make`` and ``git``'s
    index judge freshness): ``<area>/<sig[:2]>/<sig>.inputs.txt``. When any file is rewritten,
    resized or moved the signature changes and the content is hashed again, so the key stays a
    key of the bytes.

``python -m kneelib cache`` prints :func:`area_summary`; ``cache list`` and ``cache prune`` filter
by area, age and size (:func:`select_entries`), and ``prune --max-size`` removes the oldest entries
until the cache fits.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from kneelib import config

__all__ = ["CATEGORIES", "CacheEntry", "atomic_write", "content_key", "entry_path", "stat_memoized", "list_entries",
           "area_summary", "select_entries", "prune", "parse_size", "parse_age", "format_size"]

#: Area folder -> what it holds (areas not listed are reported as "other").
CATEGORIES = {
    "synthetic": "cohorts",
    "volumes": "volumes",
    "slice_features": "features",
    "qmri_biomarkers": "features",
    "qmri_pain_maps": "features",
    "siamese_pain": "features",
    "models": "models",
    "figures": "figures",
}

_SHARD = re.compile(r"[0-9a-f]{2}")


def atomic_write(path: str | Path, writer: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Write ``path`` by calling ``writer(tmp)`` on a hidden temporary sibling, then renaming it.

    The temporary name (``.<name>.<pid>.<random><suffix>``; give the real suffix when the writer
    needs it, e.g. ``".nii.gz"``) lies in the same folder, so :func:`os.replace` is atomic: readers
    see either no file or the whole file. On an exception the temporary file is removed; a killed
    process leaves it behind as a *partial* file, which :func:`prune` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def content_key(*parts, version: str) -> str:
    """SHA-256 hex key of ``parts`` (bytes, str, or JSON-able values) and a code ``version``."""
    digest = hashlib.sha256(f"kneelib-cache\n{version}\n".encode())
    for part in parts:
        if isinstance(part, bytes):
            data = part
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = json.dumps(part, sort_keys=True, default=str).encode()
        digest.update(f"{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def entry_path(root: str | Path, key: str, suffix: str) -> Path:
    """``root / key[:2] / (key + suffix)``: the layout of every content-addressed area."""
    return Path(root) / key[:2] / f"{key}{suffix}"


def stat_memoized(memo_root: str | Path, paths: Iterable[str | Path], salt: str, compute: Callable[[], str]) -> str:
    """``compute()`` -- a digest of the bytes of ``paths`` -- remembered by the files' stat signature.

    Parameters
    ----------
    memo_root : path
        The area the memo lives in (``<memo_root>/<sig[:2]>/<sig>.inputs.txt``).
    paths : iterable of path
        Every input file ``compute`` reads.
    salt : str
        What else ``compute`` depends on (options, code version), so that two digests of the
        same files do not share a memo.
    compute : callable
        Returns the digest (a string without newlines).

    Returns
    -------
    str
        The remembered digest when the signature (absolute path, size, ``st_mtime_ns`` of
        every file, and ``salt``) was seen before, else ``compute()``, then remembered.
    """
    stats = []
    for path in paths:
        path = os.path.abspath(path)  # not Path.resolve(): a system call per path component
        info = os.stat(path)
        stats.append([path, info.st_size, info.st_mtime_ns])
    memo = entry_path(memo_root, content_key(salt, stats, version="stat-memo-1"), ".inputs.txt")
    if memo.is_file():
        remembered = memo.read_text().strip()
        if remembered:
            return remembered
    digest = compute()
    if "\n" in digest:
        raise ValueError("a memoized digest must be one line")
    atomic_write(memo, lambda tmp: Path(tmp).write_text(digest + "\n"))
    return digest


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry: the files (or folder) that are created and deleted together."""

    area: str
    name: str
    paths: tuple[Path, ...]
    size_bytes: int
    modified: float
    partial: bool = False

    @property
    def category(self) -> str:
        return CATEGORIES.get(self.area, "other")

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.modified) / 86400.0


def _tree_stats(path: Path) -> tuple[int, float]:
    """Bytes on disk (allocated blocks, as ``du``) and newest modification time under ``path``."""
    if path.is_symlink() or path.is_file():
        st = path.lstat()
        return st.st_blocks * 512, st.st_mtime
    size, newest = 0, None  # the files' times: a folder's own changes whenever a file is added
    for folder, _dirs, files in os.walk(path):
        try:
            size += os.lstat(folder).st_blocks * 512  # folders take blocks too (as du counts them)
        except FileNotFoundError:
            continue
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # removed while we walk
                continue
            size += st.st_blocks * 512
            newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return size, path.lstat().st_mtime if newest is None else newest


def _keyed_entries(area: str, shard: Path, prefix: str) -> Iterable[CacheEntry]:
    groups: dict[tuple[str, bool], list[Path]] = {}
    for path in shard.iterdir():
        partial = path.name.startswith(".")
        stem = path.name if partial else path.name.split(".", 1)[0]
        groups.setdefault((stem, partial), []).append(path)
    for (stem, partial), paths in sorted(groups.items()):
        stats = [_tree_stats(p) for p in paths]
        yield CacheEntry(area, f"{prefix}{shard.name}/{stem}", tuple(sorted(paths)), sum(s for s, _ in stats),
                         max(m for _, m in stats), partial)


def _folder_entries(area: str, folder: Path, prefix: str) -> Iterable[CacheEntry]:
    children = sorted(folder.iterdir())
    for child in children:
        if child.is_dir() and not child.is_symlink() and _SHARD.fullmatch(child.name):
            yield from _keyed_entries(area, child, prefix)
        elif child.is_dir() and not child.is_symlink() and any(
                c.is_dir() and _SHARD.fullmatch(c.name) for c in child.iterdir()):
            yield from _folder_entries(area, child, f"{prefix}{child.name}/")
        else:
            size, modified = _tree_stats(child)
            yield CacheEntry(area, f"{prefix}{child.name}", (child,), size, modified, child.name.startswith("."))


def list_entries(root: str | Path | None = None, areas: Sequence[str] | None = None) -> list[CacheEntry]:
    """Every entry under the cache root (default :func:`kneelib.config.cache_root`), area by area.

    Parameters
    ----------
    root : path, optional
    areas : sequence of str, optional
        Only these area folders.
    """
    root = Path(root) if root is not None else config.cache_root()
    if not root.is_dir():
        return []
    entries = []
    for area in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if areas and area.name not in areas:
            continue
        entries.extend(_folder_entries(area.name, area, ""))
    return entries


def area_summary(entries: Sequence[CacheEntry], now: float | None = None) -> pd.DataFrame:
    """Per area: category, entries, partial files, size (bytes, GiB), newest and oldest age in days."""
    columns = ["area", "category", "entries", "partial", "bytes", "size", "newest_days", "oldest_days"]
    rows = []
    for area in sorted({e.area for e in entries}):
        mine = [e for e in entries if e.area == area]
        size = sum(e.size_bytes for e in mine)
        ages = [e.age_days(now) for e in mine]
        rows.append({"area": area, "category": mine[0].category, "entries": sum(not e.partial for e in mine),
                     "partial": sum(e.partial for e in mine), "bytes": size, "size": format_size(size),
                     "newest_days": round(min(ages), 2), "oldest_days": round(max(ages), 2)})
    return pd.DataFrame(rows, columns=columns)


def select_entries(entries: Sequence[CacheEntry], *, older_than_days: float | None = None,
                   larger_than_bytes: int | None = None, max_total_bytes: int | None = None,
                   partial_only: bool = False, now: float | None = None) -> list[CacheEntry]:
    """Entries to prune: older than and larger than the limits given, or, with ``max_total_bytes``,
    the oldest entries whose removal brings the total of ``entries`` under that size.

    Partial files (temporaries of a killed writer) are always selected once older than one hour
    (a younger one may belong to a running writer); ``partial_only`` selects nothing else.
    """
    now = time.time() if now is None else now
    partial = [e for e in entries if e.partial and e.age_days(now) > 1 / 24]
    if partial_only:
        return partial
    whole = [e for e in entries if not e.partial]
    chosen = [e for e in whole
              if (older_than_days is None or e.age_days(now) > older_than_days)
              and (larger_than_bytes is None or e.size_bytes > larger_than_bytes)]
    if max_total_bytes is not None:
        filtered = older_than_days is not None or larger_than_bytes is not None
        candidates = chosen if filtered else whole
        total = sum(e.size_bytes for e in entries)
        chosen = []
        for entry in sorted(candidates, key=lambda e: e.modified):  # oldest first
            if total <= max_total_bytes:
                break
            chosen.append(entry)
            total -= entry.size_bytes
    elif older_than_days is None and larger_than_bytes is None:
        chosen = []  # no limit given: only partial files
    return partial + chosen


def prune(entries: Sequence[CacheEntry]) -> int:
    """Delete these entries (files and folders); returns the bytes freed."""
    freed = 0
    for entry in entries:
        for path in entry.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        freed += entry.size_bytes
    return freed


_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_AGES = {"s": 1 / 86400, "m": 1 / 1440, "h": 1 / 24, "d": 1.0, "w": 7.0}


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1.5T"``, ``"1024"`` (bytes; binary units) -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"size {text!r} not understood: use e.g. 500M, 2G or a number of bytes")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_age(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"2w"``, ``"90m"`` (minutes), ``"7"`` (days) -> days."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([smhdw]?)\s*", str(text).lower())
    if not match:
        raise ValueError(f"age {text!r} not understood: use e.g. 30d, 12h, 2w")
    return float(match.group(1)) * _AGES[match.group(2) or "d"]


def format_size(n_bytes: float) -> str:
    """Bytes in binary units, e.g. ``"1.8 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} TiB"
