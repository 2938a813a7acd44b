import textwrap

import pytest

from liser_core import hookimpl, load_plugins
from liser_core.errors import AmbiguousComponentError, PluginLoadError, UsageError

GOOD = """
from liser_core import hookimpl

def make(width: int = 3):
    return ("good", width)

@hookimpl
def liser_register_students(registry):
    registry.register("good_student", make)
"""

BROKEN_IMPORT = "import this_module_does_not_exist_anywhere\n"

RAISES = """
from liser_core import hookimpl

@hookimpl
def liser_register_students(registry):
    registry.register("half_registered", lambda: None)
    raise RuntimeError("boom at registration")
"""

MISSPELT = """
from liser_core import hookimpl

@hookimpl
def liser_register_student(registry):
    registry.register("never", lambda: None)
"""

DUPLICATE = """
from liser_core import hookimpl

@hookimpl
def liser_register_students(registry):
    registry.register("logmel_cnn", lambda: None)
"""

TWICE = """
from liser_core import hookimpl

@hookimpl
def liser_register_students(registry):
    registry.register("twice", lambda: None)
    registry.register("twice", lambda: None)
"""


@pytest.fixture
def third_party(tmp_path, fake_distribution):
    src = tmp_path / "src"
    src.mkdir()
    modules = {
        "tp_good": GOOD,
        "tp_broken": BROKEN_IMPORT,
        "tp_raises": RAISES,
        "tp_misspelt": MISSPELT,
        "tp_duplicate": DUPLICATE,
        "aaa_duplicate": DUPLICATE,
        "tp_twice": TWICE,
    }
    for name, code in modules.items():
        (src / f"{name}.py").write_text(textwrap.dedent(code))
    fake_distribution(
        "tp-plugins",
        {
            "tp_good": "tp_good",
            "tp_broken": "tp_broken",
            "tp_raises": "tp_raises",
            "tp_misspelt": "tp_misspelt",
            "tp_duplicate": "tp_duplicate",
            "aaa_duplicate": "aaa_duplicate",  # sorts before first-party names
            "tp_twice": "tp_twice",
        },
        version="1.2.3",
        path=src,
    )
    return src


def by_name(host):
    return {p.name: p for p in host.plugins}


def test_first_party_plugins_load_through_entry_points(liser_host):
    plugins = by_name(liser_host)
    for name in ("synth_av", "cnn_teachers", "logmel_cnn", "losses", "run_dir", "wandb_logger", "combiners", "augment",
                 "optim", "samplers"):
        assert plugins[name].status == "loaded", plugins[name].error
        assert plugins[name].distribution == "liser"
    assert plugins["losses"].components == {"loss": ["ce", "dkd", "feature_matching", "fitnets", "kl"]}
    assert liser_host.registries.student.get("logmel_cnn").plugin == "logmel_cnn"


def test_broken_plugins_are_isolated_and_reported(third_party):
    host = load_plugins()
    p = by_name(host)
    assert p["tp_good"].status == "loaded" and p["tp_good"].version == "1.2.3"
    assert "good_student" in host.registries.student
    assert host.registries.student.build("good_student", width=5) == ("good", 5)

    assert p["tp_broken"].status == "failed" and "this_module_does_not_exist_anywhere" in p["tp_broken"].error
    assert p["tp_raises"].status == "failed" and "boom at registration" in p["tp_raises"].error
    assert "half_registered" not in host.registries.student  # partial registrations rolled back
    assert p["tp_misspelt"].status == "failed"
    assert "liser_register_student" in p["tp_misspelt"].error and "liser_register_students" in p["tp_misspelt"].error
    # a name another plugin registers too disables nothing: all three load, the bare name is ambiguous
    assert p["tp_duplicate"].status == "loaded" and p["aaa_duplicate"].status == "loaded"
    with pytest.raises(AmbiguousComponentError) as e:
        host.registries.student.get("logmel_cnn")
    assert e.value.choices == ("aaa_duplicate:logmel_cnn", "logmel_cnn:logmel_cnn", "tp_duplicate:logmel_cnn")
    # one plugin registering a name twice still fails (alone), and what it registered is rolled back
    assert p["tp_twice"].status == "failed" and "already registered" in p["tp_twice"].error
    assert "twice" not in host.registries.student
    # first-party plugins unaffected, reachable by their qualified name
    assert p["logmel_cnn"].status == "loaded"
    assert host.registries.student.get("logmel_cnn:logmel_cnn").plugin == "logmel_cnn"


def test_strict_mode_turns_failures_into_an_error(third_party):
    with pytest.raises(PluginLoadError) as e:
        load_plugins(strict=True)
    assert "tp_broken" in str(e.value) and "tp_raises" in str(e.value)


def test_disable_autoload_loads_only_named(monkeypatch):
    monkeypatch.setenv("LISER_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = load_plugins(only=["losses"])
    p = by_name(host)
    assert p["losses"].status == "loaded"
    assert p["synth_av"].status == "not loaded"
    assert host.registries.loss.list() == ["ce", "dkd", "feature_matching", "fitnets", "kl"]
    assert host.registries.student.list() == []
    with pytest.raises(UsageError, match="did you mean 'losses'"):
        load_plugins(only=["loses"])


def test_block_a_plugin():
    with pytest.raises(UsageError, match="did you mean 'wandb_logger'"):
        load_plugins(block=["wandb_loger"])
    host = load_plugins(block=["wandb_logger"])
    assert by_name(host)["wandb_logger"].status == "blocked"
    assert "wandb" not in host.registries.logger
    assert "run_dir" in host.registries.logger


def test_registration_hooks_are_historic_for_late_plugins(liser_host):
    class Late:
        @hookimpl
        def liser_register_losses(self, registry):
            registry.register("late_loss", lambda: "late")

    info = liser_host.add("late", Late())
    assert info.status == "loaded" and info.components == {"loss": ["late_loss"]}
    assert liser_host.registries.loss.build("late_loss") == "late"


def test_event_hooks_reach_every_plugin_even_if_one_raises(liser_host, caplog):
    seen = []

    class Bad:
        @hookimpl
        def liser_stage_start(self, stage):
            raise RuntimeError("logger exploded")

    class Good:
        @hookimpl
        def liser_stage_start(self, run, stage):
            seen.append((run, stage))

    liser_host.add("bad", Bad())
    liser_host.add("good", Good())
    liser_host.notify("liser_stage_start", run="R", stage="distil")
    assert seen == [("R", "distil")]
    assert "logger exploded" in caplog.text and "'bad'" in caplog.text
