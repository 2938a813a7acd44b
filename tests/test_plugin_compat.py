"""Names no package can lose, and the compatibility promise (issue 24, items 1 and 4).

``tests/fixtures/acme_v1`` is a copy of a package written against the first plugin API that
registers its own ``dkd`` -- a name LiSER's ``losses`` plugin also registers. It must load
next to LiSER and the example package, unchanged; the bare ``dkd`` is refused with the
qualified choices; ``acme:dkd`` runs acme's loss; a run started before acme was installed
resumes with LiSER's ``dkd``. An API change that breaks such a package fails here.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import liser_core
from liser_common import provenance
from liser_core.engine import Engine, prepare_config
from liser_core.errors import AmbiguousComponentError, ConfigError, UsageError
from liser_tools.bench import rows_of_run
from liser_tools.cli import main as cli_main
from liser_tools.testing import TINY_OVERRIDES, TINY_RECIPE

REPO = Path(__file__).parents[1]
ACME_SRC = REPO / "tests" / "fixtures" / "acme_v1"
EXAMPLE_SRC = REPO / "examples" / "liser-example-plugin" / "src"
#: the tiny run with one teacher and a single loss, to be as quick as a run can be
ONE_TEACHER = [
    "teachers=[{name: audio_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4], hidden: 8}}]",
    "student.options={channels: [4]}",
]


def _forget(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture
def acme(fake_distribution, monkeypatch):
    """acme-kd 1.0.0 (the first-edition package) installed, auto-loading on."""
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    fake_distribution("acme-kd", {"acme": "acme_v1.plugin"}, version="1.0.0", path=ACME_SRC)
    yield
    _forget("acme_v1")  # imported from the repository, not the fixture's temporary folder


@pytest.fixture
def example(fake_distribution):
    fake_distribution("liser-example-plugin", {"example": "liser_example.plugin"}, version="0.1.0", path=EXAMPLE_SRC)
    yield
    _forget("liser_example")


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


def _losses(name: str, options: str = "{}") -> str:
    return f"distil.losses=[{{name: {name}, options: {options}}}]"


# -- item 4: the compatibility promise ------------------------------------------------------------
def test_a_first_edition_package_and_the_example_load_unchanged_next_to_liser(acme, example):
    host = liser_core.load_plugins(strict=True)  # any plugin failing to load fails the test
    plugins = {p.name: p for p in host.plugins}
    assert (plugins["acme"].status, plugins["acme"].distribution) == ("loaded", "acme-kd")
    assert plugins["acme"].components == {"dataset": ["acme_tones"], "student": ["acme_mlp"],
                                          "loss": ["dkd"], "logger": ["acme_events"]}
    assert plugins["example"].status == "loaded" and "example_gru" in plugins["example"].components["student"]
    assert plugins["losses"].components["loss"] == ["ce", "dkd", "feature_matching", "fitnets", "kl"]
    # nothing of either package vanished, and LiSER's own dkd is still there
    for kind, name in (("student", "acme_mlp"), ("dataset", "acme_tones"), ("logger", "acme_events"),
                       ("student", "example_gru"), ("loss", "symmetric_kl")):
        assert name in host.registries[kind]
    assert host.registries.loss.get("losses:dkd").factory.__name__ == "DecoupledKD"
    assert host.registries.loss.get("acme:dkd").factory.__name__ == "AcmeDKD"


@pytest.mark.slow
def test_a_tiny_run_with_every_acme_component_and_acme_dkd(acme, recipe, tmp_path):
    host = liser_core.load_plugins(strict=True)
    run_dir = tmp_path / "run"
    ctx = liser_core.run(recipe, [*TINY_OVERRIDES, *ONE_TEACHER, f"run_dir={run_dir}",
                                  "data.name=acme_tones", "data.options={}", "student={name: acme_mlp, options: {hidden: 8}}",
                                  _losses("acme:dkd", "{gamma: 0.5}"), "loggers={run_dir: {}, acme_events: {}}"],
                         host=host)
    weight, loss = ctx.losses["dkd"]  # keys stay bare: they name files
    assert type(loss).__name__ == "AcmeDKD" and loss.gamma == 0.5
    assert type(ctx.student).__name__ == "MeanPoolMLP"
    assert ctx.results()["student"]["uar"] >= 0
    events = [json.loads(line)["event"] for line in (run_dir / "acme_events.jsonl").read_text().splitlines()]
    assert events == ["run_start", "run_end"]
    # the run's records hold qualified names
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["distil"]["losses"][0]["name"] == "acme:dkd"
    assert (config["student"]["name"], config["data"]["name"]) == ("acme:acme_mlp", "acme:acme_tones")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["components"]["distil.losses.0"] == "acme:dkd"
    assert manifest["components"]["teachers.0"] == "cnn_teachers:audio_cnn"
    # ... and so do bench rows and the model card (whose ids and tags take the bare name)
    (row,) = [r for r in rows_of_run("k", ctx) if r["model"] == "student"]
    assert row["components"] == "teachers=cnn_teachers:audio_cnn student=acme:acme_mlp losses=acme:dkd"
    card = (run_dir / "student" / "README.md").read_text()
    assert "(acme:acme_mlp," in card and "student-acme_mlp" in card


# -- item 1: names that cannot be taken from under a package ---------------------------------------
def test_the_ambiguous_bare_name_is_refused_before_any_work_with_the_choices(acme, recipe, tmp_path):
    host = liser_core.load_plugins()
    with pytest.raises(ConfigError) as e:
        liser_core.run(recipe, [*TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}", _losses("dkd")], host=host)
    assert e.value.key == "distil.losses.0.name"
    assert "acme:dkd, losses:dkd" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(AmbiguousComponentError):
        host.registries.loss.get("dkd")


def test_the_cli_refuses_the_bare_name_in_one_line_with_exit_2(acme, recipe, tmp_path, capsys):
    code = cli_main(["run", str(recipe), "--dry-run", *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}", _losses("dkd")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "distil.losses.0.name" in err and "acme:dkd, losses:dkd" in err


def test_list_and_plugins_show_the_clash(acme, capsys):
    assert cli_main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    assert "acme:dkd" in out and "losses:dkd" in out and "clash" in out
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "loss dkd: acme:dkd, losses:dkd; the bare name is refused" in out
    assert cli_main(["show", "acme:dkd"]) == 0
    assert "gamma" in capsys.readouterr().out


def test_fingerprints_treat_a_unique_bare_name_and_the_first_party_qualified_one_alike(acme, recipe):
    host = liser_core.load_plugins()
    versions = host.code_versions()

    def fp(name):
        cfg = prepare_config(recipe, [*TINY_OVERRIDES, _losses(name)], host)
        return cfg.distil.losses[0].name, provenance.fingerprint(cfg, versions)

    first_party, ours = fp("losses:dkd"), fp("acme:dkd")
    assert first_party[0] == "dkd"  # what runs before the clash hashed: old runs and rows stay current
    assert ours[0] == "acme:dkd" and ours[1] != first_party[1]
    without_acme = liser_core.load_plugins(block=["acme"])
    cfg = prepare_config(recipe, [*TINY_OVERRIDES, _losses("dkd")], without_acme)
    assert provenance.fingerprint(cfg, versions) == first_party[1]


@pytest.mark.slow
def test_an_old_run_dir_resumes_with_the_component_it_was_started_with(fake_distribution, recipe, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    before = liser_core.load_plugins()  # acme not installed yet: `dkd` is LiSER's
    liser_core.run(recipe, [*TINY_OVERRIDES, *ONE_TEACHER, f"run_dir={run_dir}", _losses("dkd")], host=before)
    saved = (run_dir / "state" / "recipe.yaml").read_text()
    assert "name: dkd\n" in saved  # bare, as runs of the first edition saved it
    # make it an old, unfinished run: a first-edition manifest (no component record), not complete
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["components"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    state = json.loads((run_dir / "state" / "run.json").read_text())
    (run_dir / "state" / "run.json").write_text(json.dumps(state | {"status": "interrupted"}))

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    fake_distribution("acme-kd", {"acme": "acme_v1.plugin"}, version="1.0.0", path=ACME_SRC)
    try:
        after = liser_core.load_plugins()
        assert "acme:dkd" in after.registries.loss
        cfg = prepare_config(run_dir / "state" / "recipe.yaml", [f"run_dir={run_dir}"], after)
        assert cfg.distil.losses[0].name == "dkd"  # LiSER's, in the form its fingerprint hashed
        ctx = Engine(cfg, after, resume="resume").execute()
    finally:
        _forget("acme_v1")
    assert ctx.resumed
    assert type(ctx.losses["dkd"][1]).__name__ == "DecoupledKD"


# -- the override policy ----------------------------------------------------------------------------
OVERRIDER = """
from liser_core import hookimpl
from liser_plugins.losses import KLDivergence

class LoudKL(KLDivergence):
    '''KL, overriding the first-party one on purpose.'''

@hookimpl
def liser_register_losses(registry):
    registry.register("kl", LoudKL, override=True)
"""


def test_a_declared_override_takes_the_bare_name_and_is_shown(fake_distribution, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "loudkl.py").write_text(textwrap.dedent(OVERRIDER))
    (src / "loudkl_too.py").write_text(textwrap.dedent(OVERRIDER))
    fake_distribution("loudkl", {"loud": "loudkl"}, path=src)
    host = liser_core.load_plugins()
    reg = host.registries.loss
    assert reg.get("kl").qualified == "loud:kl"  # the declared override wins the bare name
    assert reg.get("losses:kl").factory.__name__ == "KLDivergence"  # the first-party one stays reachable
    assert reg.canonical("loud:kl") == "loud:kl" and reg.canonical("losses:kl") == "kl"
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "overrides first-party: loss kl" in out and "the bare name means loud:kl (override)" in out
    assert cli_main(["show", "kl"]) == 0  # both described; first, which one a recipe's `kl` is
    assert capsys.readouterr().out.startswith("loss kl: registered by 2 plugins (losses:kl, loud:kl); the bare "
                                              "name 'kl' means loud:kl (override)")
    # a second package overriding the same name: neither wins, the bare name is refused again
    fake_distribution("loudkl-too", {"loud_too": "loudkl_too"}, path=src)
    with pytest.raises(AmbiguousComponentError, match="losses:kl, loud:kl, loud_too:kl"):
        liser_core.load_plugins().registries.loss.get("kl")


SQUATTER = """
from liser_core import hookimpl
from liser_plugins.losses import KLDivergence

class Mine(KLDivergence):
    '''Registered under other plugins' names.'''

@hookimpl
def liser_register_losses(registry):
    registry.register("newloss", Mine, plugin="losses")  # into LiSER's own namespace
"""


def test_a_plugin_registers_under_its_own_name_only(fake_distribution, tmp_path, monkeypatch):
    """Registry.register(plugin=...) let a package register under another plugin's name: its
    component then passed for LiSER's (losses:newloss, `liser show` named LiSER), or made the
    real owner fail to load as a duplicate. Refused: that plugin fails alone, naming why, and
    registers nothing."""
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "squat.py").write_text(textwrap.dedent(SQUATTER))
    fake_distribution("squat", {"squat": "squat"}, path=src)
    host = liser_core.load_plugins()
    (info,) = [p for p in host.plugins if p.name == "squat"]
    assert info.status == "failed" and "cannot register it under plugin 'losses'" in info.error
    assert "losses:newloss" not in host.registries.loss.qualified_names() and "newloss" not in host.registries.loss
    assert all(p.status == "loaded" for p in host.plugins if p.distribution == "liser")  # LiSER's own unharmed


def test_a_package_calling_itself_liser_is_not_first_party(fake_distribution, tmp_path, monkeypatch):
    """A distribution named ``liser`` first on sys.path made its plugin "LiSER's own": its bare
    names then won over third-party ones as first-party ones do. First-party also needs LiSER's
    plugin package (liser_plugins)."""
    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "posing.py").write_text(textwrap.dedent(SQUATTER.replace(', plugin="losses"', "")))
    fake_distribution("liser", {"posing": "posing"}, path=src)
    host = liser_core.load_plugins()
    (info,) = [p for p in host.plugins if p.name == "posing"]
    assert info.status == "loaded" and info.distribution.startswith("liser (not LiSER: ")
    assert host.registries.loss.get("posing:newloss").first_party is False


IMPOSTOR = """
import torch
from liser_core import hookimpl
from liser_plugins.losses import KLDivergence

class Zero(KLDivergence):
    def forward(self, student, batch, targets):
        return student.logits.sum() * 0.0

@hookimpl
def liser_register_losses(registry):
    registry.register("kl", Zero)
"""


@pytest.mark.parametrize("copy_ours", [True, False])
def test_a_package_named_liser_first_on_the_path_neither_hides_nor_replaces_liser(copy_ours, fake_distribution,
                                                                                tmp_path, monkeypatch, caplog):
    """importlib.metadata keeps one distribution per name, the first on sys.path: a package that
    called its distribution ``liser`` hid every LiSER plugin (runs failed: "unknown combiner") or,
    declaring LiSER's entry-point names, replaced them -- its ``kl`` returning 0 ran as LiSER's
    ``kl``, recorded as ``liser 0.1.0``. The LiSER that runs is found by location: its plugins all
    load under their names, the impostor's load as a third party's, named by where it lies."""
    import importlib.metadata

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "impostor.py").write_text(IMPOSTOR)
    ours = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="liser") if ep.value.startswith("liser_plugins")}
    eps = {**ours, "losses": "impostor"} if copy_ours else {"impostor": "impostor"}
    fake_distribution("liser", eps, version="9.9", path=src)
    with caplog.at_level("WARNING", logger="liser.plugins"):
        host = liser_core.load_plugins()
    loaded = {p.name: p for p in host.plugins if p.status == "loaded"}
    assert set(ours) <= set(loaded) and all(loaded[n].ours and loaded[n].distribution == "liser" for n in ours)
    assert "per_class" in host.registries.combiner  # every first-party registry filled
    kl = host.registries.loss.get("losses:kl")
    assert kl.first_party and kl.factory.__module__ == "liser_plugins.losses"
    if copy_ours:  # its `losses` entry point is shadowed by LiSER's: kl is LiSER's alone
        assert host.registries.loss.get("kl") is kl
    else:  # a third party's kl beside LiSER's: the bare name is refused, naming both (docs/plugins.md, Names)
        with pytest.raises(UsageError, match="impostor:kl, losses:kl"):
            host.registries.loss.get("kl")
    impostor = [p for p in host.plugins if p.module == "impostor"]
    assert len(impostor) == 1 and impostor[0].distribution.startswith("liser (not LiSER: ")
    assert impostor[0].status == ("shadowed" if copy_ours else "loaded") and not impostor[0].ours
    assert host.code_versions()["liser"] == liser_core.__version__
    assert any("is not the LiSER that runs" in r.getMessage() for r in caplog.records)


def test_a_teacher_checkpoint_is_the_teacher_the_recipe_names_with_its_saved_options(run_tiny, tmp_path, capsys):
    """teachers.N.checkpoint built the component its config.json records whatever the recipe
    named (a face_cnn ran as "audio_cnn" in every table) and ignored the recipe's options:
    both refused before any work, naming the key; the saved teacher names its plugin, and a
    saved component whose plugin is not loaded is refused (not another package's of its name)."""
    import json

    from liser_core import load_plugins
    from liser_core.checkpoint import load_component
    from liser_core.errors import UsageError
    from liser_tools.testing import TINY_OVERRIDES

    ctx = run_tiny()
    face = ctx.run_dir / "teachers" / "face_cnn"
    assert json.loads((face / "config.json").read_text())["plugin"] == "cnn_teachers"
    base = ["run", str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES, f"run_dir={tmp_path / 'again'}"]
    capsys.readouterr()
    assert cli_main([*base, f"teachers=[{{name: audio_cnn, checkpoint: {face}}}]"]) == 2
    err = capsys.readouterr().err
    assert "teachers.0.name: " in err and "holds teacher 'cnn_teachers:face_cnn', not 'cnn_teachers:audio_cnn'" in err
    assert cli_main([*base, f"teachers=[{{name: face_cnn, checkpoint: {face}, options: {{hidden: 64}}}}]"]) == 2
    assert "teachers.0.options: a teacher loaded from" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
    config = json.loads((face / "config.json").read_text())
    (face / "config.json").write_text(json.dumps({**config, "plugin": "gone"}))  # config.json edited by hand
    with pytest.raises(UsageError, match="config.json: plugin differs from what model.safetensors was saved with"):
        load_component(face, load_plugins().registries.teacher, kind="teacher")
    from liser_tools.testing import resave_config

    resave_config(face, {**config, "plugin": "gone"})  # saved so by a package not installed here
    with pytest.raises(UsageError, match="a teacher 'face_cnn' of plugin 'gone', which is not loaded here .*"
                                         "cnn_teachers:face_cnn: not this component"):
        load_component(face, load_plugins().registries.teacher, kind="teacher")


def test_a_resumed_run_never_continues_with_another_packages_component_of_its_name(tmp_path):
    """A run recorded twin:tloss; twin uninstalled and zz (with its own tloss) installed, the
    bare name in state/recipe.yaml resumed with zz:tloss (only mixed_code said anything). The
    recorded component is kept: gone, validation refuses it by its name."""
    import types

    from liser_core import hookimpl, load_plugins
    from liser_core.config import load_recipe, qualify_recorded, validate_components
    from liser_core.errors import ConfigError
    from liser_plugins.losses import KLDivergence
    from liser_tools.testing import TINY_RECIPE

    zz = types.SimpleNamespace(liser_register_losses=hookimpl(lambda registry: registry.register("tloss", KLDivergence)))
    host = load_plugins(extra=[("zz", zz)])
    assert host.registries.loss.get("tloss").qualified == "zz:tloss"
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    cfg = load_recipe(tmp_path / "tiny.yaml", ["distil.losses=[{name: tloss}]"])
    qualify_recorded(cfg, host.registries, plugins=["twin"], components={"distil.losses.0": "twin:tloss"})
    assert cfg.distil.losses[0].name == "twin:tloss"
    with pytest.raises(ConfigError, match="distil.losses.0.name: unknown loss 'twin:tloss'"):
        validate_components(cfg, host.registries)


UPTEACHER = """
from liser_core import hookimpl
from liser_plugins.cnn_teachers import AudioCNNTeacher

@hookimpl
def liser_register_teachers(registry):
    registry.register("up_teacher", AudioCNNTeacher)
"""


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_a_third_party_teachers_stored_outputs_depend_on_its_package_version(version, fake_distribution, tmp_path,
                                                                              monkeypatch):
    """up-plugin 2.0 changed its teacher's forward, not its weights or options: the store served
    1.0's outputs (predictions of the old code, no flag). Its stored outputs are keyed by its
    package's version too; LiSER's own teachers are not (LiSER bumps STORE_FORMAT)."""
    import types

    from liser_cache.store import teacher_fingerprint
    from liser_core.labels import RAVDESS8
    from liser_core.stages.label import package_extra

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "upteacher.py").write_text(textwrap.dedent(UPTEACHER))
    fake_distribution("up-plugin", {"up": "upteacher"}, version=version, path=src)
    host = liser_core.load_plugins()
    engine = types.SimpleNamespace(reg=host.registries, host=host)
    teacher = host.registries.teacher.build("up_teacher", label_space=RAVDESS8, channels=[4, 8], hidden=16)
    teacher.liser_spec = {"name": "up_teacher", "options": {}, "plugin": "up"}
    (extra,) = package_extra(engine, teacher)["package"].items()
    assert extra[0] == "up-plugin" and extra[1].startswith(f"{version}+src.")  # no checkout: its files' digest
    ours = types.SimpleNamespace(liser_spec={"name": "audio_cnn", "plugin": "cnn_teachers"})
    assert package_extra(engine, ours) is None
    fps = {v: teacher_fingerprint(teacher, sample_rate=16000, extra={"package": {"up-plugin": v}}) for v in ("1.0", "2.0")}
    assert fps["1.0"] != fps["2.0"]


@pytest.mark.slow
def test_a_plugin_edited_at_the_same_version_is_other_code(fake_distribution, tmp_path, monkeypatch, capsys):
    """A package installed without a git checkout (a wheel) was named by its version alone: its
    code edited or reinstalled at the same version ran as the same code -- a finished run was
    "nothing to do", grid rows stayed done, fitted teachers and stored outputs were reused, and
    a resume mixed both codes unflagged. Its version now carries a digest of its files; the
    same files give the same digest."""
    from liser_common import provenance as prov

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    (src / "upkg").mkdir(parents=True)
    (src / "upkg" / "__init__.py").write_text(textwrap.dedent(UPTEACHER))
    (src / "upkg" / "table.yaml").write_text("scale: 1\n")  # a data file of the package counts too
    fake_distribution("up-plugin", {"up": "upkg"}, version="1.0", path=src)

    def version() -> str:
        prov.source_digest.cache_clear()  # one process sees one code; this test plays several
        host = liser_core.load_plugins()
        assert host.code_sources()["up-plugin"]["version"] == host.code_versions()["up-plugin"]
        return host.code_versions()["up-plugin"]

    first = version()
    assert first.startswith("1.0+src.") and version() == first  # the same files, the same code
    (src / "upkg" / "__pycache__").mkdir(exist_ok=True)
    (src / "upkg" / "__pycache__" / "x.pyc").write_bytes(b"cache")  # bytecode is no code change
    assert version() == first
    (src / "upkg" / "table.yaml").write_text("scale: 2\n")
    edited = version()
    assert edited.startswith("1.0+src.") and edited != first

    # a finished run is said to be of other code once the plugin is edited (as after an upgrade)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    base = ["run", str(recipe), *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}", "teachers=[{name: up_teacher, "
            "fit: {epochs: 1, batch_size: 8}, options: {channels: [4, 8], hidden: 16}}]"]
    prov.source_digest.cache_clear()
    assert cli_main(base) == 0
    capsys.readouterr()
    prov.source_digest.cache_clear()
    assert cli_main(base) == 0
    assert "other code" not in capsys.readouterr().err
    (src / "upkg" / "table.yaml").write_text("scale: 3\n")
    prov.source_digest.cache_clear()
    assert cli_main(base) == 0
    err = capsys.readouterr().err
    assert "it ran under other code" in err and err.count("up-plugin=1.0+src.") == 2


def test_a_hand_edited_config_json_is_refused_not_rebuilt_over_the_weights(run_tiny, tmp_path, capsys):
    """Reversing config.json's label order made `liser predict` print the same probabilities under
    other emotion names (exit 0, no warning), and `liser export` wrote the edited labels into
    the ONNX sidecar: the weights' header now keeps what config.json said when they were saved."""
    import shutil

    from liser_core import Student

    ctx = run_tiny()
    folder = tmp_path / "student"
    shutil.copytree(ctx.run_dir / "student", folder)
    original = (folder / "config.json").read_text()
    config = json.loads(original)
    wav = tmp_path / "x.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 16000).astype("float32"), 16000)
    for key, edit in (("label_space", lambda c: c["label_space"] | {"classes": c["label_space"]["classes"][::-1]}),
                      ("options", lambda c: {**c["options"], "dropout": 0.9}),
                      ("name", lambda c: "ecapa_tdnn")):
        (folder / "config.json").write_text(json.dumps({**config, key: edit(config)}))
        with pytest.raises(UsageError, match=rf"config.json: {key} differs from what model.safetensors was saved with"):
            Student.from_pretrained(folder)
        assert cli_main(["predict", str(folder), str(wav)]) == 2
        err = capsys.readouterr().err
        assert f"{key} differs" in err and "Traceback" not in err
        assert cli_main(["export", str(folder)]) == 2 and not (folder / "student.onnx").exists()
        capsys.readouterr()
    (folder / "config.json").write_text(original)  # restored: loads again
    assert Student.from_pretrained(folder).label_space.classes == tuple(config["label_space"]["classes"])


UPSTUDENT = """
from liser_core import hookimpl
from liser_plugins.logmel_cnn import LogMelCNN

@hookimpl
def liser_register_students(registry):
    registry.register("up_student", LogMelCNN)
"""


def test_a_saved_students_package_is_recorded_and_checked_on_load(fake_distribution, tmp_path, monkeypatch, caplog):
    """config.json recorded only the plugin's entry-point name: another package declaring the same
    plugin name rebuilt the saved student as its own class, and another version of the package
    loaded without a word. The package and its version are recorded; another package is refused,
    another version said."""
    from liser_core import Student
    from liser_core.labels import RAVDESS8
    from liser_core.prepare import build_component

    monkeypatch.delenv("LISER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "upstudent.py").write_text(textwrap.dedent(UPSTUDENT))
    fake_distribution("up-plugin", {"up": "upstudent"}, version="1.0", path=src)
    host = liser_core.load_plugins()
    student = build_component(host.registries.student, "up_student", {"channels": [4, 8]}, label_space=RAVDESS8)
    student.save_pretrained(tmp_path / "saved")
    package = json.loads((tmp_path / "saved" / "config.json").read_text())["package"]
    assert package["name"] == "up-plugin" and package["version"].startswith("1.0+src.")
    assert Student.from_pretrained(tmp_path / "saved", host=host).liser_spec["package"] == package
    # LiSER's own students record LiSER
    ours = build_component(host.registries.student, "logmel_cnn", {"channels": [4, 8]}, label_space=RAVDESS8)
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["package"] == {
        "name": "liser", "version": liser_core.__version__}

    fake_distribution("up-plugin", {"up": "upstudent"}, version="1.1", path=src)  # upgraded
    with caplog.at_level("WARNING", "liser"):
        Student.from_pretrained(tmp_path / "saved", host=liser_core.load_plugins())
    assert f"saved with up-plugin {package['version']}, loaded with up-plugin 1.1+src." in caplog.text

    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "twinstudent.py").write_text(textwrap.dedent(UPSTUDENT))
    fake_distribution("twin-plugin", {"up": "twinstudent"}, version="1.0", path=twin)  # the same plugin name, first
    with pytest.raises(UsageError, match="from package 'up-plugin'; plugin 'up' here comes from package "
                                         "'twin-plugin': not this component"):
        Student.from_pretrained(tmp_path / "saved", host=liser_core.load_plugins())


def test_a_plugin_installed_in_an_ignored_folder_of_a_checkout_is_named_by_its_files(tmp_path):
    """The README's .venv lies inside the LiSER clone: a plugin installed there took the clone's
    commit (dirty: False) for its own, so editing it at the same version went unnoticed. A folder
    the checkout does not track is no commit's code."""
    import subprocess

    from liser_common import provenance as prov

    repo = tmp_path / "repo"
    (repo / "site" / "pkg").mkdir(parents=True)
    (repo / "tracked").mkdir()
    (repo / ".gitignore").write_text("site/\n")
    (repo / "tracked" / "a.py").write_text("x = 1\n")
    (repo / "site" / "pkg" / "__init__.py").write_text("y = 2\n")
    for cmd in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, capture_output=True)
    prov.source_state.cache_clear()
    assert prov.source_state(str(repo / "tracked"))["commit"]  # tracked: the commit names it
    assert prov.source_state(str(repo / "site" / "pkg")) == {"commit": None, "dirty": None}
