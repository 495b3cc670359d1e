"""Bad input ends in one line: checks for a raised error, an in-process mamlpp-eval and a
finished CLI process."""

from __future__ import annotations

import subprocess

import pytest


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The text of a raised mamlpp error, which must be one non-empty line."""
    text = str(exc.value)
    assert "\n" not in text and text, repr(text)
    return text


def eval_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """mamlpp-eval in-process on bad input: exit code 2 and exactly one stderr line, returned."""
    from mamlpp.evaluate import main as eval_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        eval_main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("mamlpp-eval: error: "), err
    return err[0]


def error_lines(stderr: str) -> list[str]:
    """The `mamlpp: error:` lines of a CLI run's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("mamlpp: error:")]


def assert_failed_without_traceback(done: subprocess.CompletedProcess, *needles: str) -> None:
    """A CLI run that failed (exit != 0) with a message naming every needle and no traceback."""
    assert done.returncode not in (0, None), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)
