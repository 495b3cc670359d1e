"""mamlpp.files.atomic_write, the one atomic write: whole files or none, and the temporaries a
killed writer leaves are ones the run-directory clean-up recognises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mamlpp.experiment.run_dir import remove_temp_files
from mamlpp.files import atomic_write, create_temp


def test_bytes_or_a_writer_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, b"first")
    atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def half(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"x")  # a folder in the way: refused, nothing left over
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_killed_writers_temporaries_are_cleaned_from_run_directories(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    left = []
    for path in (run / "results.json", run / "trackers.json", run / "checkpoints" / "latest.pt"):
        fd, tmp = create_temp(path)  # what a writer killed before its rename leaves
        os.close(fd)
        left.append(tmp)
    fd, other = create_temp(run / "notes.txt")  # not a file mamlpp writes in a run: kept
    os.close(fd)
    assert sorted(remove_temp_files(run)) == sorted(left)
    assert other.exists()
