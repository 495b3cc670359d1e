"""Faults at the edges of a run directory (issue 19): checksums, clean-up, refused folders, full
disks, read-only places, damaged files. Each ends in one line, exit code != 0, nothing lost.

Checkpoints come from the real tiny run of conftest.py (copied, never changed in place); faults
are real: flipped bytes, /dev/full (the kernel's ENOSPC), a read-only mount (or chmod when not
root), files where folders belong.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import mamlpp
from helpers.cli import TINY_ARGS, Cli, result_accuracies
from helpers.errors import error_lines, eval_error, one_line
from mamlpp import files
from mamlpp.apps.run_dir_hook import check_run_dir
from mamlpp.errors import MamlppError
from mamlpp.experiment import checksum
from mamlpp.experiment.checkpoints import CheckpointError, load_checkpoint
from mamlpp.experiment.console import log, run_log
from mamlpp.experiment.members import read_member
from mamlpp.experiment.run_dir import RunDirError, is_new, remove_temp_files

pytestmark = pytest.mark.slow


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def copy_run(reference_run: dict, to: Path) -> Path:
    shutil.copytree(reference_run["dir"], to)
    return to


def flip_tensor_byte(path: Path) -> bytes:
    """Flip one bit in the middle of the largest tensor record (zip records are stored
    uncompressed); return the file's new bytes."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        record = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    off = record.header_offset  # local header: 30 bytes, then its own name and extra lengths
    name_len = int.from_bytes(data[off + 26 : off + 28], "little")
    extra_len = int.from_bytes(data[off + 28 : off + 30], "little")
    data[off + 30 + name_len + extra_len + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return bytes(data)


def as_old_checkpoint(path: Path) -> None:
    """Rewrite `path` as mamlpp wrote checkpoints before they carried a checksum."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state[checksum.KEY]
    torch.save(state, path)


def tiny_cfg(cli: Cli, *overrides: str) -> mamlpp.Config:
    return mamlpp.compose(*TINY_ARGS, *cli.data_args, *overrides)


# --------------------------------------------------------------------------- checksums


def test_the_digest_sees_values_dtypes_shapes_and_structure() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    base = checksum.content_digest({"w": x, "lr": 0.1, "steps": [1, 2]})
    variants = [
        {"w": x.reshape(4, 3), "lr": 0.1, "steps": [1, 2]},
        {"w": x.double(), "lr": 0.1, "steps": [1, 2]},
        {"w": x + 1e-7, "lr": 0.1, "steps": [1, 2]},
        {"w": x, "lr": 0.1000001, "steps": [1, 2]},
        {"w": x, "lr": 0.1, "steps": (1, 2)},
        {"w": x, "lr": 0.1, "steps": [1, 2], "extra": None},
    ]
    assert len({base, *map(checksum.content_digest, variants)}) == len(variants) + 1
    assert checksum.content_digest({"w": x.t().contiguous().t()}) == checksum.content_digest(
        {"w": x}
    )
    odd = {"bf16": x.bfloat16(), "flag": x > 3, "scalar": torch.tensor(2.5), "empty": x[:0]}
    buf = io.BytesIO()
    torch.save(checksum.seal(odd), buf)
    buf.seek(0)
    assert checksum.matches(torch.load(buf, weights_only=True)) is True


def test_every_changed_byte_is_refused_or_harmless(reference_run: dict, tmp_path: Path) -> None:
    """A changed byte anywhere in a real checkpoint either stops the load in one line or left
    the content intact (zip headers, padding): never different numbers without a word."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    ckpt_dir = reference_run["dir"] / "checkpoints"
    refused = harmless = 0
    for name in ("epoch_0001.pt", "latest.pt"):
        data = (ckpt_dir / name).read_bytes()
        original = load_checkpoint(ckpt_dir / name)
        assert checksum.matches(original) is True
        for _ in range(60):
            pos = rng.randrange(len(data))
            changed = bytearray(data)
            changed[pos] ^= 1 << rng.randrange(8)
            path = tmp_path / name
            path.write_bytes(bytes(changed))
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                assert "\n" not in str(exc) and str(path) in str(exc)
                refused += 1
                continue
            assert checksum.content_digest(state) == checksum.content_digest(original), (
                f"seed {seed}: byte {pos} of {name} changed the content silently"
            )
            harmless += 1
    print(f"\nrandom seed {seed}: {refused} changed bytes refused, {harmless} harmless")
    assert refused > harmless  # most of a checkpoint is tensor data


def test_a_flipped_tensor_byte_is_refused_by_eval_and_load(
    reference_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    member = run / "checkpoints" / "epoch_0001.pt"
    torch.load(member, weights_only=True)  # PyTorch itself loads it without a word...
    flip_tensor_byte(member)
    torch.load(member, weights_only=True)
    before = hashes(run)
    line = eval_error(capsys, str(run))  # ...mamlpp refuses it: top-k holds epoch 1
    assert "epoch_0001.pt is corrupt" in line and "checksum" in line
    assert "is corrupt" in eval_error(capsys, str(member))
    with pytest.raises(MamlppError, match="is corrupt") as exc:
        mamlpp.load(run)
    one_line(exc)
    assert hashes(run) == before  # nothing written, nothing moved


def test_checkpoints_without_a_checksum_still_load(reference_run: dict, tmp_path: Path) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    for path in (run / "checkpoints").glob("*.pt"):
        as_old_checkpoint(path)
        assert checksum.KEY not in torch.load(path, weights_only=True)
    member = read_member(run / "checkpoints" / "epoch_0001.pt")
    fresh = read_member(reference_run["dir"] / "checkpoints" / "epoch_0001.pt")
    assert member.learner.keys() == fresh.learner.keys()
    assert all(torch.equal(member.learner[k], fresh.learner[k]) for k in fresh.learner)
    model = mamlpp.load(run)
    assert len(model.learners) == 2


def test_junk_checkpoints_are_one_line(
    reference_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    member = run / "checkpoints" / "epoch_0001.pt"
    junk = {
        "empty": b"",
        "text": b"not a checkpoint\n",
        "random": random.Random(0).randbytes(4096),
        "foreign zip": _zip_bytes(tmp_path),
        "a pickle naming os.system": pickle.dumps(os.system),
    }
    for what, data in junk.items():
        member.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second line on the console either
            with pytest.raises(CheckpointError, match="is unreadable") as exc:
                load_checkpoint(member)
        one_line(exc)
        line = eval_error(capsys, str(run), "members=epoch=1")
        assert "epoch_0001.pt is unreadable" in line, (what, line)


def _zip_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "foreign.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x04junk")
    return path.read_bytes()


def test_a_corrupt_member_stops_the_test_phase_in_one_line(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """A run killed before results.json resumes into its test phase: a member whose content
    changed is refused, not ensembled."""
    run = copy_run(reference_run, tmp_path / "run")
    (run / "results.json").unlink()
    (run / "done").unlink()
    flip_tensor_byte(run / "checkpoints" / "epoch_0000.pt")
    with pytest.raises(MamlppError, match="top-k member of epoch 0: .*is corrupt") as exc:
        mamlpp.train(tiny_cfg(cli), run)
    one_line(exc)
    assert not (run / "results.json").exists()


# --------------------------------------------------------------------------- clean-up


def test_clean_up_removes_only_the_temporaries_mamlpp_names(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    ckpt.mkdir(parents=True)
    ours = [
        run / ".config.yaml.tmp123",
        run / ".results.json.tmp9",
        run / ".done.tmp77",
        run / ".metrics.csv.tmp5",
        run / ".trackers.json.new",
        run / ".scalars.csv.new",
        ckpt / "..latest.pt.new.tmp42",
        ckpt / ".latest.pt.new",
        ckpt / ".previous.pt.link",
        ckpt / ".epoch_0003.pt.tmp8",
    ]
    users = [
        run / ".notes.tmp",
        run / ".thesis.tmp1",
        run / ".draft.new",
        run / ".shortcut.link",
        run / ".config.yaml.tmp",  # no pid: not a name mamlpp writes
        run / ".bashrc",
        ckpt / ".mine.pt.tmp3",
        ckpt / ".epoch_0003.pt.new",
    ]
    for path in ours + users:
        path.write_text("x")
    removed = remove_temp_files(run)
    assert sorted(removed) == sorted(ours)
    assert all(p.exists() for p in users)


def test_what_may_be_a_run_directory(reference_run: dict, tmp_path: Path) -> None:
    assert is_new(tmp_path / "absent") and is_new(tmp_path)
    hydra_only = tmp_path / "hydra_only" / ".hydra"
    hydra_only.mkdir(parents=True)
    (hydra_only / "config.yaml").write_text("{}")
    assert is_new(hydra_only.parent)
    assert not is_new(reference_run["dir"])  # resumable
    interrupted = copy_run(reference_run, tmp_path / "interrupted")
    for name in ("results.json", "done", "metrics.csv", "config.yaml"):
        (interrupted / name).unlink()
    assert not is_new(interrupted)

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("mine")
    (foreign / "train.log").write_text("my own log\n")
    with pytest.raises(RunDirError, match="not a mamlpp run directory") as exc:
        is_new(foreign)
    assert "config.yaml" in one_line(exc)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        is_new(afile)
    with pytest.raises(RunDirError, match="is a file"):
        check_run_dir(str(afile / "run"), "auto")
    broken = copy_run(reference_run, tmp_path / "broken")
    shutil.rmtree(broken / "checkpoints")
    (broken / "checkpoints").write_text("x")
    with pytest.raises(RunDirError, match="checkpoints is a file"):
        is_new(broken)
    with pytest.raises(RunDirError, match="hydra.run.dir is empty"):
        check_run_dir("", "auto")
    with pytest.raises(RunDirError, match="run.resume=must"):
        check_run_dir(str(tmp_path / "nothing_yet"), "must")
    assert not (tmp_path / "nothing_yet").exists()


def test_refused_run_directories_through_the_api(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """The same rules when mamlpp.train is given the folder; nothing in it changes."""
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    (foreign / ".thesis.tmp1").write_text("unsaved work")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where, needle in ((foreign, "not a mamlpp run directory"), (afile, "is a file")):
        before = hashes(tmp_path)
        with pytest.raises(RunDirError, match=needle) as exc:
            mamlpp.train(tiny_cfg(cli), where)
        one_line(exc)
        assert hashes(tmp_path) == before
    with pytest.raises(RunDirError, match="empty") as exc:
        mamlpp.train(tiny_cfg(cli), "")
    one_line(exc)


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    run = tmp_path / "new" / "run"
    with pytest.raises(MamlppError, match="dataset.source"):
        mamlpp.train(tiny_cfg(cli, f"dataset.source={tmp_path / 'nowhere'}"), run)
    assert not run.exists()
    with pytest.raises(MamlppError, match="run.resume=must") as exc:
        mamlpp.train(tiny_cfg(cli, "run.resume=must"), run)
    one_line(exc)
    assert not run.exists()


def test_the_cli_refuses_before_creating_anything(cli: Cli, tmp_path: Path) -> None:
    """Empty hydra.run.dir, a foreign folder and run.resume=must on a new name: one line and
    exit code 2, and not even Hydra's .hydra/ is written."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    cases = {
        "hydra.run.dir is empty": ["hydra.run.dir="],
        "not a mamlpp run directory": [f"hydra.run.dir={foreign}"],
        "run.resume=must": ["run.resume=must", "seed=7"],  # runs/smoke/seed=7 does not exist
    }
    for needle, args in cases.items():
        before = hashes(tmp_path)
        done = cli.run(*args, cwd=cwd)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mamlpp: error:"), done.stderr
        assert needle in lines[0]
        assert hashes(tmp_path) == before and not any(cwd.iterdir()), needle


def test_a_failed_new_run_leaves_no_folder_from_the_cli(cli: Cli, tmp_path: Path) -> None:
    done = cli.run(f"dataset.source={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert done.returncode == 2 and "dataset.source" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


# --------------------------------------------------------------------------- disks and files


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    cli: Cli, reference_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 4th write of latest.pt goes to /dev/full: the kernel's ENOSPC ends the run in one
    line; latest.pt keeps iteration 3 and the same command then finishes to the same numbers."""
    run = tmp_path / "run"
    writes: list[str] = []
    create_temp = files.create_temp

    def full_disk_on_the_fourth(final: Path) -> tuple[int, Path]:
        """The one atomic write's temp file: for the 4th .latest.pt.new its bytes go to
        /dev/full (the temp file itself is real, so its clean-up removes only it)."""
        fd, tmp = create_temp(final)
        if final.name == ".latest.pt.new":
            writes.append(str(final))
            if len(writes) == 4:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(files, "create_temp", full_disk_on_the_fourth)
    with pytest.raises(MamlppError, match="No space left on device") as exc:
        mamlpp.train(tiny_cfg(cli, "run.checkpoint_every_iters=1"), run)
    assert "latest.pt" in one_line(exc)
    monkeypatch.undo()
    ckpt = run / "checkpoints"
    assert load_checkpoint(ckpt / "latest.pt")["progress"]["next_iteration"] == 3
    assert load_checkpoint(ckpt / "previous.pt")["progress"]["next_iteration"] == 2
    # No temporary left; epoch 0's member was written just before (the resume rewrites it).
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch_0000.pt", "latest.pt", "previous.pt"]

    done = cli.run(f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr and "at iteration 3" in done.stderr
    results = json.loads((run / "results.json").read_text())
    assert result_accuracies(results) == result_accuracies(reference_run["results"])


def test_a_full_disk_under_train_log_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "train.log").symlink_to("/dev/full")
    with run_log(tmp_path):
        for i in range(3):
            log(f"line {i}")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    warnings = [line for line in err.splitlines() if "cannot write" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], err
    assert "line 2" in err  # the console keeps every line


def test_unwritable_train_log_and_lock_are_one_line(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    for name in ("train.log", ".lock"):
        run = copy_run(reference_run, tmp_path / name.strip("."))
        (run / name).unlink()
        (run / name).mkdir()  # a folder where mamlpp writes a file: also for root
        before = hashes(run)
        with pytest.raises(MamlppError, match=f"{name}: Is a directory") as exc:
            mamlpp.train(tiny_cfg(cli), run)
        one_line(exc)
        after = hashes(run)
        after.pop("train.log", None)  # the lock's case logs its two lines first
        before.pop("train.log", None)
        assert after == before


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Makes a folder read-only: a read-only bind mount for root (whom chmod does not stop),
    chmod for anyone else."""
    undo: list[list[str] | Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
            undo.append(path)
            return
        done = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot make a read-only mount: {done.stderr.decode().strip()}")
        undo.append(["umount", str(path)])

    yield make
    for item in undo:
        if isinstance(item, Path):
            for p in [item, *item.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
        else:
            subprocess.run(item, check=True)


def test_a_read_only_run_directory_is_one_line(
    cli: Cli, reference_run: dict, tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    (run / "results.json").unlink()  # it would go on to the test phase
    (run / "done").unlink()
    read_only(run)
    before = hashes(run)
    with pytest.raises(RunDirError, match="not writable"):
        check_run_dir(str(run), "auto")  # the CLI's check, before Hydra writes .hydra/
    with pytest.raises(MamlppError, match="train.log") as exc:
        mamlpp.train(tiny_cfg(cli), run)
    one_line(exc)
    assert hashes(run) == before


def test_a_truncated_results_json_is_one_line_and_retest_rewrites_it(
    cli: Cli, reference_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    full = (run / "results.json").read_bytes()
    (run / "results.json").write_bytes(full[:100])
    with pytest.raises(MamlppError, match="results.json is truncated") as exc:
        mamlpp.train(tiny_cfg(cli), run)
    assert "run.retest=true" in one_line(exc)
    assert "results.json is truncated" in eval_error(capsys, str(run))
    assert (run / "results.json").read_bytes() == full[:100]  # refused, not replaced

    mamlpp.train(tiny_cfg(cli, "run.retest=true"), run)
    results = json.loads((run / "results.json").read_text())
    assert result_accuracies(results) == result_accuracies(reference_run["results"])


def test_finished_run_with_another_config_is_refused_also_when_changes_are_allowed(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    run = copy_run(reference_run, tmp_path / "run")
    before = hashes(run)
    cfg = tiny_cfg(cli, "algorithm.meta_lr=0.002", "run.allow_config_change=true")
    with pytest.raises(MamlppError, match="algorithm.meta_lr: 0.001 -> 0.002") as exc:
        mamlpp.train(cfg, run)
    assert "allow_config_change" in one_line(exc)
    assert {k: v for k, v in hashes(run).items() if k != "train.log"} == {
        k: v for k, v in before.items() if k != "train.log"
    }


def test_any_file_system_fault_is_one_line_from_the_cli(
    cli: Cli, reference_run: dict, tmp_path: Path
) -> None:
    """A fault no check names in advance (here a file where TensorBoard's folder belongs, in
    the test phase of a resumed run) still ends in one line, exit code 2, checkpoints kept."""
    run = copy_run(reference_run, tmp_path / "run")
    (run / "results.json").unlink()
    (run / "done").unlink()
    shutil.rmtree(run / "tb")
    (run / "tb").write_text("not a folder")
    before = {k: v for k, v in hashes(run).items() if k.startswith("checkpoints")}
    done = cli.run(f"hydra.run.dir={run}")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and f"{run / 'tb'}: File exists" in errors[0], done.stderr
    assert {k: v for k, v in hashes(run).items() if k.startswith("checkpoints")} == before
