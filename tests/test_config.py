import textwrap
from pathlib import Path

import pytest

from liser_core.config import load_recipe, parse_override, validate_components
from liser_core.engine import prepare_config
from liser_core.errors import ConfigError

BASE = """\
data: {name: synth_av}
teachers:
  - {name: face_cnn, weight: 0.7}
  - {name: audio_cnn, weight: 0.3}
student: {name: logmel_cnn}
distil:
  losses: [{name: kl, options: {temperature: 2.0}}, {name: ce}]
"""


@pytest.fixture
def recipe(tmp_path):
    def write(text=BASE):
        p = tmp_path / "r.yaml"
        p.write_text(textwrap.dedent(text))
        return p

    return write


def error(host, path, overrides=()):
    with pytest.raises(ConfigError) as e:
        prepare_config(path, list(overrides), host)
    return e.value


def test_the_shipped_recipe_validates(liser_host):
    cfg = prepare_config("recipes/synth_kd.yaml", [], liser_host)
    assert cfg.student.name == "logmel_cnn" and cfg.distil.losses[0].name == "kl"


def test_valid_base_and_defaults(liser_host, recipe):
    cfg = prepare_config(recipe(), [], liser_host)
    assert cfg.distil.epochs == 10 and cfg.finetune.epochs == 0 and cfg.teachers[1].weight == 0.3


@pytest.mark.parametrize(
    "extra, key, suggestion",
    [
        ("distill: {epochs: 2}\n", "distill", "distil"),
        ("distil: {epocs: 2}\n", "distil.epocs", "epochs"),
        ("evaluate: {splt: test}\n", "evaluate.splt", "split"),
    ],
)
def test_unknown_keys_name_the_full_path_and_close_matches(liser_host, recipe, extra, key, suggestion):
    e = error(liser_host, recipe(BASE + extra))
    assert e.key == key
    assert suggestion in e.suggestions
    assert key in str(e) and "did you mean" in str(e)


def test_unknown_key_inside_a_list_item(liser_host, recipe):
    e = error(liser_host, recipe(BASE.replace("weight: 0.3", "wieght: 0.3")))
    assert e.key == "teachers.1.wieght" and "weight" in e.suggestions


def test_wrong_type(liser_host, recipe):
    e = error(liser_host, recipe(BASE + "seed: lots\n"))
    assert e.key == "seed" and "lots" in str(e)
    e = error(liser_host, recipe(), ["distil.epochs=many"])
    assert e.key == "distil.epochs"


def test_missing_required_value(liser_host, recipe):
    e = error(liser_host, recipe(BASE.replace("student: {name: logmel_cnn}\n", "")))
    assert e.key == "student.name" and "missing" in str(e)


def test_unknown_component_suggests(liser_host, recipe):
    e = error(liser_host, recipe(BASE.replace("logmel_cnn", "logmel_cn")))
    assert e.key == "student.name" and "logmel_cnn" in str(e)
    e = error(liser_host, recipe(BASE.replace("{name: ce}", "{name: cee}")))
    assert e.key == "distil.losses.1.name" and "'ce'" in str(e)


def test_unknown_component_option_suggests(liser_host, recipe):
    e = error(liser_host, recipe(), ["student.options.chanels=[8, 16]"])
    assert e.key == "student.options.chanels" and "channels" in e.suggestions
    e = error(liser_host, recipe(BASE.replace("temperature: 2.0", "temprature: 2.0")))
    assert e.key == "distil.losses.0.options.temprature" and "temperature" in e.suggestions


def test_component_option_types_are_checked(liser_host, recipe):
    e = error(liser_host, recipe(BASE.replace("temperature: 2.0", "temperature: hot")))
    assert e.key == "distil.losses.0.options.temperature" and "float" in str(e)
    e = error(liser_host, recipe(BASE.replace("{name: ce}", "{name: feature_matching, options: {distance: l1}}")))
    assert "one of 'mse', 'cosine'" in str(e)
    e = error(liser_host, recipe(), ["student.options.channels=eight"])
    assert e.key == "student.options.channels"
    e = error(liser_host, recipe(), ["data.options.classes=ravdess9"])
    assert e.key == "data.options.classes"


def test_injected_options_cannot_be_set(liser_host, recipe):
    e = error(liser_host, recipe(), ["student.options.label_space=cremad6"])
    assert e.key == "student.options.label_space" and "set by LiSER" in str(e)


def test_overrides(liser_host, recipe):
    cfg = prepare_config(
        recipe(), ["distil.epochs=3", "teachers.1.weight=0.1", "student.options.channels=[8, 16]", "run_dir=/tmp/x"], liser_host
    )
    assert cfg.distil.epochs == 3 and cfg.teachers[1].weight == 0.1
    assert list(cfg.student.options.channels) == [8, 16] and cfg.run_dir == "/tmp/x"
    e = error(liser_host, recipe(), ["distil.epocs=3"])
    assert e.key == "distil.epocs" and "epochs" in e.suggestions
    e = error(liser_host, recipe(), ["teachers.5.weight=1"])
    assert e.key == "teachers.5"
    e = error(liser_host, recipe(), ["teachers.0.wieght=1"])
    assert e.key == "teachers.0.wieght" and "weight" in e.suggestions


def test_parse_override():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=x=y") == ("a", "x=y")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_missing_paths(liser_host, recipe, tmp_path):
    e = error(liser_host, recipe(), [f"teachers.0.checkpoint={tmp_path / 'nope'}"])
    assert e.key == "teachers.0.checkpoint" and "does not exist" in str(e)
    e = error(liser_host, tmp_path / "no_such_recipe.yaml")
    assert "does not exist" in str(e)


def test_yaml_cannot_run_code(liser_host, recipe, tmp_path):
    marker = tmp_path / "pwned"
    text = BASE + f'name: !!python/object/apply:os.system ["touch {marker}"]\n'
    e = error(liser_host, recipe(text))
    assert "invalid YAML" in str(e)
    assert not marker.exists()


def test_semantic_checks(liser_host, recipe):
    e = error(liser_host, recipe(BASE.replace("weight: 0.7", "weight: -1")))
    assert e.key == "teachers.0.weight"
    e = error(liser_host, recipe(), ["device=gpu"])
    assert e.key == "device"
    e = error(liser_host, recipe(), ["distil.losses=[]"])
    assert e.key == "distil.losses"
    e = error(liser_host, recipe(), ["loggers.wandb.mode=sometimes"])
    assert e.key == "loggers.wandb.mode"


def test_validation_uses_only_registries(liser_host, recipe):
    cfg = load_recipe(recipe())
    validate_components(cfg, liser_host.registries)  # does not raise, builds nothing heavy


def test_mapping_override_replaces_component_options_but_merges_typed_nodes(liser_host, recipe):
    text = BASE.replace("student: {name: logmel_cnn}", "student: {name: logmel_cnn, options: {channels: [8, 16]}}")
    cfg = prepare_config(recipe(text), ["student.options={dropout: 0.2}", "distil={epochs: 4}"], liser_host)
    assert dict(cfg.student.options) == {"dropout": 0.2}
    assert cfg.distil.epochs == 4 and cfg.distil.losses[0].name == "kl"  # rest of distil kept
    cfg = prepare_config(recipe(text), ["student={name: logmel_cnn, options: {dropout: 0.3}}"], liser_host)
    assert dict(cfg.student.options) == {"dropout": 0.3}
    e = error(liser_host, recipe(text), ["student.options.width=3"])
    assert "student.options={...}" in str(e)


def test_floats_in_exponent_form_are_numbers(tmp_path):
    """``lr: 3e-3`` (YAML 1.2, JSON) is a number, in a recipe and in an override; YAML 1.1 alone
    read it as text and the run was refused with "write it without quotes"."""
    from liser_core.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(Path("recipes/synth_kd.yaml").read_text() + "\nstore_dtype: float32\n")
    text = path.read_text().replace("lr: 3.0e-3", "lr: 3e-3")
    assert "lr: 3e-3" in text
    path.write_text(text)
    cfg = load_recipe(path, ["distil.weight_decay=1e-4", "distil.losses.0.options.temperature=2e0"])
    assert cfg.distil.weight_decay == 1e-4 and cfg.distil.losses[0].options.temperature == 2.0
    assert any(t.fit.lr == 3e-3 for t in cfg.teachers)
    assert load_recipe(path, ["seed=7"]).seed == 7  # integers stay integers
