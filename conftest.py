"""Suite-wide pytest rules (this file sits at the repository root, so it covers tests/ and the
example plugin's tests alike).

Under CI (``CI`` set, as ``.ci/run`` runs), a skipped test is a failure: every fixture the suite
reads is in the repository and ``.ci/run`` installs every optional package, so a skip there can
only mean something is missing that the suite is meant to exercise. Locally a skip stays a skip
(e.g. no Chromium on a developer's machine).
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]  # tests/test_ci_rules.py runs the rules below in a child pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _as_failure(report, what: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} skipped under CI ({reason}): CI must run every test (conftest.py)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped:
        _as_failure(report, collector.nodeid)
