"""The suite's own rules: under CI a skip is a failure; the fixtures tests read are in the repo."""

from __future__ import annotations

from pathlib import Path

from liser_plugins.corpora import fixtures

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
CASES = """
import pytest

def test_runs():
    assert True

def test_skips():
    pytest.skip("a fixture is missing")

@pytest.mark.skipif(True, reason="marked")
def test_marked():
    pass

@pytest.mark.xfail(reason="known")
def test_xfails():
    assert False
"""


MODULE_SKIP = "import pytest\npytest.importorskip('liser_surely_absent_module')\n\ndef test_x():\n    pass\n"


def _run(pytester, monkeypatch, ci: str | None, module: str = CASES):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(ROOT_CONFTEST.read_text().replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(test_cases=module)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")


def test_a_skip_is_a_failure_under_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, "true")
    outcomes = result.parseoutcomes()
    # the skip in the test body fails the call; the skipif mark fails the setup (an error)
    assert outcomes == {"passed": 1, "failed": 1, "errors": 1, "xfailed": 1}
    out = result.stdout.str()
    assert "test_skips skipped under CI" in out and "a fixture is missing" in out
    module = _run(pytester, monkeypatch, "true", MODULE_SKIP)
    assert module.ret != 0 and "skipped under CI" in module.stdout.str()  # a whole module skipped


def test_a_skip_stays_a_skip_outside_ci(pytester, monkeypatch):
    outcomes = _run(pytester, monkeypatch, None).parseoutcomes()
    assert outcomes == {"passed": 1, "skipped": 2, "xfailed": 1}
    assert _run(pytester, monkeypatch, None, MODULE_SKIP).parseoutcomes() == {"skipped": 1}


def test_the_reference_metadata_is_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    assert fixtures.REFERENCE.is_relative_to(root)  # never ../shared: a clone has everything
    rav = fixtures.read_metadata("ravdess_speech_audio.tsv")
    crema = fixtures.read_metadata(fixtures.REFERENCE / "cremad_audio.tsv")
    assert len(rav) == 1440 and len(crema) == 7442
    assert {r["actor"] for r in rav} == {str(a) for a in range(1, 25)}
