import pytest

from liser_core import Registry, UnknownComponentError
from liser_core.errors import DuplicateComponentError


def make():
    reg = Registry("student")

    @reg.register("logmel_cnn")
    def logmel_cnn(width: int = 8):
        """A CNN.

        More text."""
        return ("cnn", width)

    reg.register("logmel_cnn_tiny", lambda: ("tiny",), summary="tiny one")
    reg.register("ecapa_small", lambda: ("ecapa",))
    return reg


def test_build_passes_options():
    reg = make()
    assert reg.build("logmel_cnn", width=3) == ("cnn", 3)
    assert reg.build("logmel_cnn") == ("cnn", 8)


def test_list_with_wildcards_is_sorted():
    reg = make()
    assert reg.list() == ["ecapa_small", "logmel_cnn", "logmel_cnn_tiny"]
    assert reg.list("logmel*") == ["logmel_cnn", "logmel_cnn_tiny"]
    assert reg.list("*small") == ["ecapa_small"]
    assert reg.list("nothing*") == []


def test_summary_is_first_docstring_line_unless_given():
    reg = make()
    assert reg.get("logmel_cnn").summary == "A CNN."
    assert reg.get("logmel_cnn_tiny").summary == "tiny one"


def test_unknown_name_suggests_close_matches():
    reg = make()
    with pytest.raises(UnknownComponentError) as e:
        reg.build("logmel_cn")
    assert "logmel_cnn" in str(e.value)
    assert e.value.suggestions[0] == "logmel_cnn"
    with pytest.raises(UnknownComponentError) as e:
        reg.get("zzz")
    assert "registered students: ecapa_small, logmel_cnn, logmel_cnn_tiny" in str(e.value)


def test_duplicates_are_refused_and_original_kept():
    reg = make()
    with pytest.raises(DuplicateComponentError, match="already registered"):
        reg.register("logmel_cnn", lambda: "other")
    assert reg.build("logmel_cnn") == ("cnn", 8)


def test_membership_and_len():
    reg = make()
    assert "ecapa_small" in reg and reg.is_registered("ecapa_small")
    assert "nope" not in reg
    assert len(reg) == 3
    assert [e.name for e in reg] == reg.list()
