"""A refused recipe prints only its error line; a valid one prints what validation logged."""

from __future__ import annotations

import io
import logging

from liser_core.engine import ConsoleGate
from liser_core.testing import TINY_OVERRIDES, TINY_RECIPE
from liser_tools.cli import main


def _console():
    stream = io.StringIO()
    h = logging.StreamHandler(stream)
    h._liser_console = True
    h.setLevel(logging.INFO)
    root = logging.getLogger("liser")
    old = [x for x in root.handlers if getattr(x, "_liser_console", False)]
    for x in old:
        root.removeHandler(x)
    root.addHandler(h)
    root.setLevel(logging.INFO)
    return stream, h, old


def _restore(h, old):
    root = logging.getLogger("liser")
    root.removeHandler(h)
    for x in old:
        root.addHandler(x)


def test_held_lines_are_dropped_on_refusal_and_passed_on_when_valid():
    stream, h, old = _console()
    try:
        gate = ConsoleGate(patience=3600)
        logging.getLogger("liser").info("corpus built")
        assert stream.getvalue() == ""  # held
        gate.drop()
        logging.getLogger("liser").info("after")
        assert stream.getvalue() == "after\n"  # the console is back; what was held is gone
        gate = ConsoleGate(patience=3600)
        logging.getLogger("liser.sub").warning("a warning")
        gate.pass_on()
        assert stream.getvalue().endswith("after\na warning\n")
    finally:
        _restore(h, old)


def test_a_long_validation_is_not_left_silent():
    stream, h, old = _console()
    try:
        ConsoleGate(patience=0.0)
        logging.getLogger("liser").info("digests of 10,000 clips")
        assert stream.getvalue() == "digests of 10,000 clips\n"  # past its patience: passed on at once
    finally:
        _restore(h, old)


def test_a_valid_dry_run_still_says_what_validation_did(tmp_path, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    assert main(["run", str(tmp_path / "tiny.yaml"), "--dry-run", *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"]) == 0
    assert "corpus synth_av" in capsys.readouterr().err
