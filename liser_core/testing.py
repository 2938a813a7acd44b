"""Test helpers for plugin authors, under the name they were first published by: the fixtures
of :mod:`liser_tools.testing` (the pytest plugin LiSER installs) and the conformance checks
``check_student``, ``check_teacher``, ``check_loss``, ``check_dataset``."""

from liser_tools.testing import (  # noqa: F401 - re-exported (also for pytest_plugins = [...])
    TINY_OVERRIDES,
    TINY_RECIPE,
    fake_distribution,
    liser_host,
    run_tiny,
    write_dist_info,
)


def __getattr__(name: str):
    from liser_tools import testing

    return getattr(testing, name)
