"""kneelib.cache: the atomic writer, the inventory per area, selection by age and size, and the CLI."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kneelib import cache
from kneelib.cli import main

DAY = 86400.0


def _file(path: Path, n_bytes: int, age_days: float, now: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * n_bytes)
    os.utime(path, (now - age_days * DAY, now - age_days * DAY))
    return path


@pytest.fixture
def tree(tmp_path):
    """A cache with a cohort folder, keyed volumes (image + sidecar), a model and a partial file."""
    now = time.time()
    key_old, key_new = "ab" + "0" * 62, "cd" + "1" * 62
    _file(tmp_path / "synthetic/oai_smoke_seed0/contents.csv", 20_000, 40, now)
    _file(tmp_path / "synthetic/oai_smoke_seed0/0.C.2/x/001", 100_000, 40, now)
    _file(tmp_path / f"volumes/ab/{key_old}.nii.gz", 300_000, 10, now)
    _file(tmp_path / f"volumes/ab/{key_old}.json", 100, 10, now)
    _file(tmp_path / f"volumes/cd/{key_new}.nii.gz", 50_000, 1, now)
    _file(tmp_path / f"volumes/cd/{key_new}.json", 100, 1, now)
    _file(tmp_path / f"volumes/cd/.{key_new}.nii.gz.123.abcd1234.nii.gz", 4096, 0.5, now)
    _file(tmp_path / f"siamese_pain/knees/ab/{key_old}.npz", 8192, 3, now)
    _file(tmp_path / "models/kl/model.pt", 1_000_000, 2, now)
    return tmp_path, now


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "entry.npz"
    cache.atomic_write(target, lambda tmp: tmp.write_text("done"), suffix=".npz")
    assert target.read_text() == "done"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cache.atomic_write(tmp_path / "a" / "other.npz", broken)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["entry.npz"]
    assert cache.entry_path(tmp_path, "ab12", ".npz") == tmp_path / "ab" / "ab12.npz"
    assert cache.content_key(b"x", {"a": 1}, version="1") != cache.content_key(b"x", {"a": 1}, version="2")
    assert cache.content_key(b"ab", "c", version="1") != cache.content_key(b"a", "bc", version="1")


def test_inventory_groups_files_into_entries_per_area(tree):
    root, now = tree
    entries = cache.list_entries(root)
    names = {(e.area, e.name, e.partial) for e in entries}
    assert ("synthetic", "oai_smoke_seed0", False) in names
    assert ("volumes", "ab/ab" + "0" * 62, False) in names  # image + sidecar = one entry
    assert ("siamese_pain", "knees/ab/ab" + "0" * 62, False) in names
    assert ("models", "kl", False) in names
    assert sum(e.partial for e in entries) == 1
    volume = next(e for e in entries if e.name == "ab/ab" + "0" * 62)
    assert len(volume.paths) == 2 and volume.size_bytes >= 300_100 and volume.category == "volumes"
    summary = cache.area_summary(entries, now=now).set_index("area")
    assert summary.loc["volumes", "entries"] == 2 and summary.loc["volumes", "partial"] == 1
    assert summary.loc["synthetic", "category"] == "cohorts" and summary.loc["models", "category"] == "models"
    assert summary.loc["synthetic", "oldest_days"] == pytest.approx(40, abs=0.01)
    assert cache.list_entries(root, areas=["models"])[0].area == "models"


def test_selection_by_age_size_and_total(tree):
    root, now = tree
    entries = cache.list_entries(root)
    whole = lambda chosen: sorted(e.name for e in chosen if not e.partial)
    assert whole(cache.select_entries(entries, now=now)) == []  # no limit: only stale partial files
    assert sum(e.partial for e in cache.select_entries(entries, now=now)) == 1  # 12 h old
    assert whole(cache.select_entries(entries, older_than_days=5, now=now)) == ["ab/ab" + "0" * 62,
                                                                                  "oai_smoke_seed0"]
    assert whole(cache.select_entries(entries, larger_than_bytes=500_000, now=now)) == ["kl"]
    assert whole(cache.select_entries(entries, older_than_days=5, larger_than_bytes=200_000, now=now)) == [
        "ab/ab" + "0" * 62]
    total = sum(e.size_bytes for e in entries)
    # the oldest go first: the cohort (40 days), then the older volume (10 days)
    chosen = cache.select_entries(entries, max_total_bytes=total - 150_000, now=now)
    assert whole(chosen) == ["ab/ab" + "0" * 62, "oai_smoke_seed0"]
    freed = cache.prune(chosen)
    assert freed == sum(e.size_bytes for e in chosen)
    assert not (root / "synthetic" / "oai_smoke_seed0").exists() and not any((root / "volumes" / "ab").iterdir())
    assert (root / "models" / "kl" / "model.pt").is_file()


def test_parsers():
    assert cache.parse_size("2G") == 2 * 1024 ** 3 and cache.parse_size("500MiB") == 500 * 1024 ** 2
    assert cache.parse_size("1024") == 1024
    assert cache.parse_age("12h") == 0.5 and cache.parse_age("2w") == 14 and cache.parse_age("3") == 3
    with pytest.raises(ValueError, match="size"):
        cache.parse_size("lots")
    with pytest.raises(ValueError, match="age"):
        cache.parse_age("old")
    assert cache.format_size(1536) == "1.5 KiB" and cache.format_size(12) == "12 B"


def test_cli_summary_list_and_prune(tree, capsys):
    root, _ = tree
    assert main(["cache", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "cohorts" in out and "volumes" in out
    assert main(["cache", "list", "--root", str(root), "--larger-than", "500K"]) == 0
    assert "models/kl" in capsys.readouterr().out
    assert main(["cache", "prune", "--root", str(root), "--older-than", "30d"]) == 0
    assert "would remove 2 entries" in capsys.readouterr().out  # the cohort and the stale partial file
    assert (root / "synthetic" / "oai_smoke_seed0").is_dir()
    assert main(["cache", "prune", "--root", str(root), "--older-than", "30d", "--yes"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert not (root / "synthetic" / "oai_smoke_seed0").exists()


def test_stat_memoized_hashes_once_and_again_when_a_file_changes(tmp_path):
    import hashlib

    data = [tmp_path / "in" / f"{i}.dcm" for i in range(3)]
    for i, path in enumerate(data):
        _file(path, 1000 + i, 1, time.time())
    calls = []

    def digest():
        calls.append(1)
        return hashlib.sha256(b"".join(p.read_bytes() for p in data)).hexdigest()

    memo = tmp_path / "area"
    first = cache.stat_memoized(memo, data, "options-a", digest)
    assert cache.stat_memoized(memo, data, "options-a", digest) == first and len(calls) == 1
    assert [e.name.split("/")[1] for e in cache.list_entries(tmp_path, ["area"])][0]  # an entry of its own
    cache.stat_memoized(memo, data, "options-b", digest)  # other options: not the same memo
    assert len(calls) == 2
    data[1].write_bytes(b"y" * 1001)  # same size, new bytes and modification time
    os.utime(data[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = cache.stat_memoized(memo, data, "options-a", digest)
    assert len(calls) == 3 and changed != first
    with pytest.raises(ValueError, match="one line"):
        cache.stat_memoized(memo, data[:1], "x", lambda: "a\nb")
