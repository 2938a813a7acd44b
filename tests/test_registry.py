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


def test_a_factory_that_is_not_callable_is_refused_at_registration():
    """`register("bad_int", 42)` loaded, then `liser show`, `liser list -v` and a run each
    crashed with a traceback naming no plugin: refused where the plugin registers it."""
    r = Registry("student")
    with pytest.raises(ValueError, match="student 'bad_int': its factory 42 is not callable"):
        r.register("bad_int", 42)
    assert "bad_int" not in r


def test_a_plugin_registering_a_non_callable_fails_alone_naming_why():
    import types

    from liser_core import hookimpl, load_plugins

    bad = types.SimpleNamespace(liser_register_students=hookimpl(lambda registry: registry.register("bad_int", 42)))
    host = load_plugins(extra=[("badint", bad)])
    (info,) = [p for p in host.plugins if p.name == "badint"]
    assert info.status == "failed" and "not callable" in info.error
    assert "bad_int" not in host.registries.student and "logmel_cnn" in host.registries.student


def _factories():
    import torch

    from liser_core import Student

    class NoDim(Student):
        def __init__(self, **kw):
            torch.nn.Module.__init__(self)

    return {"linear": lambda **kw: torch.nn.Linear(2, 2), "nodim": lambda **kw: NoDim(),
            "mse": lambda **kw: torch.nn.MSELoss()}


@pytest.mark.parametrize("kind, factory, words", [
    ("student", "linear", "built a Linear, not a liser_core.Student"),
    ("student", "nodim", "built a NoDim without embedding_dim, sample_rate, label_space"),
    ("loss", "mse", "built a MSELoss, not a liser_core.Loss"),  # no needs_teacher, no bind
])
def test_a_plugin_component_the_engine_cannot_use_is_one_line_naming_the_key_and_plugin(kind, factory, words, tmp_path):
    """A student without embedding_dim, a loss that is no Loss: raw AttributeErrors deep in the
    run, naming neither the plugin nor its package (rc 1). Now a ConfigError at the recipe key,
    naming the plugin (exit 2 from the CLI), before anything is written."""
    import types

    from liser_core import hookimpl, load_plugins
    from liser_core.engine import run
    from liser_core.errors import ConfigError
    from liser_tools.testing import TINY_OVERRIDES, TINY_RECIPE

    make = _factories()[factory]
    hook = "liser_register_students" if kind == "student" else "liser_register_losses"
    plugin = types.SimpleNamespace(**{hook: hookimpl(lambda registry: registry.register("odd", make))})
    host = load_plugins(extra=[("oddplug", plugin)])
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    site = ["student.name=odd", "student.options={}"] if kind == "student" else ["distil.losses=[{name: odd}]"]
    with pytest.raises(ConfigError) as err:
        run(recipe, [*TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}", *site], host=host)
    assert err.value.key == ("student" if kind == "student" else "distil.losses.0")
    assert words in str(err.value) and "of plugin oddplug" in str(err.value)
    assert not (tmp_path / "run").exists()
