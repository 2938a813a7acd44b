"""Test helpers for plugin authors: :mod:`liser_tools.testing` (fixtures, ``run_tiny``) and the
conformance checks ``check_student``, ``check_teacher``, ``check_loss``, ``check_dataset``."""


def __getattr__(name: str):
    from liser_tools import testing

    return getattr(testing, name)
