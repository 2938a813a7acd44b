"""Every fitted teacher carries its provenance wherever it is stored (run dir, store, a copy).

A teacher fitted on fold 1's teacher speaker (09) must not reach a fold-3 run (which tests 08 and
09) unflagged by any path: its store folder, a renamed copy, a copy without its card. Weights
LiSER did not write are a loud warning and the flag ``unverified_teacher`` (docs/soundness.md).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file
from test_soundness import one_line_error, rav, recipe  # noqa: F401 - rav is a fixture

from liser_core import ConfigError, Teacher, TeacherCard, checkpoint, hookimpl, load_plugins
from liser_core.checkpoint import load_component
from liser_core.engine import run
from liser_plugins.corpora import fixtures
from liser_tools.cli import main

FOLD1 = "fold: 1, label_fraction: 0.5, teacher_speakers: [9]"  # tests 01; the teacher fits on 09
FOLD3 = "fold: 3, label_fraction: 0.5"  # tests 08 and 09


def fold1_store(tmp_path, rav, store):  # noqa: F811
    """A fold-1 run with a store: its teacher, fitted on speaker 09, kept under ``fitted/``."""
    assert main(["run", str(recipe(tmp_path, rav, FOLD1, "f1.yaml")), f"run_dir={tmp_path / 'f1'}", f"store={store}"]) == 0
    (entry,) = (store / "fitted").iterdir()
    return entry


def test_a_store_entry_fitted_on_test_speakers_is_refused_wherever_it_is_copied(rav, tmp_path, capsys):  # noqa: F811
    entry = fold1_store(tmp_path, rav, tmp_path / "store")
    card = json.loads((entry / "config.json").read_text())["card"]
    assert card["source"] == f"fitted in run {tmp_path / 'f1'}" and card["fit_sets"][0]["speakers"] == ["09"]
    third = recipe(tmp_path, rav, FOLD3, "f3.yaml")
    renamed = tmp_path / "renamed"
    shutil.copytree(entry, renamed)
    for source in (entry, renamed):
        capsys.readouterr()
        assert main(["run", str(third), f"teachers.0.checkpoint={source}", f"run_dir={tmp_path / 'f3'}"]) == 2
        line = one_line_error(capsys)
        assert "teachers.0: teacher 'audio_cnn' was fitted on test speaker(s) 09" in line and "allow_test_overlap" in line
        assert not (tmp_path / "f3").exists()

    # the card stripped (or replaced by another's): the weights still say they are LiSER's
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "card"}))
    assert main(["run", str(third), f"teachers.0.checkpoint={renamed}", f"run_dir={tmp_path / 'f3'}"]) == 2
    line = one_line_error(capsys)
    assert f"teachers.0.checkpoint: {renamed}: weights written by LiSER without their teacher card" in line
    (renamed / "config.json").write_text(json.dumps(config | {"card": card | {"fit_sets": []}}))
    assert main(["run", str(third), f"teachers.0.checkpoint={renamed}", f"run_dir={tmp_path / 'f3'}"]) == 2
    assert "its card's fit sets are not the ones its weights record" in one_line_error(capsys)

    assert main(["run", str(third), f"teachers.0.checkpoint={entry}", "teachers.0.allow_test_overlap=true",
                 f"run_dir={tmp_path / 'f3'}"]) == 0
    assert "test_overlap" in json.loads((tmp_path / "f3" / "metrics.json").read_text())["flags"]


def test_a_run_that_reuses_store_weights_says_where_they_were_fitted(rav, tmp_path):  # noqa: F811
    store = tmp_path / "store"
    entry = fold1_store(tmp_path, rav, store)
    again = tmp_path / "again"
    assert main(["run", str(tmp_path / "f1.yaml"), f"run_dir={again}", f"store={store}"]) == 0
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["diagnostics"]["teacher_fits"]["audio_cnn"] == {
        "fit_key": metrics["diagnostics"]["teacher_fits"]["audio_cnn"]["fit_key"], "reused": True,
        "reused_from": str(entry), "fitted_in": str(tmp_path / "f1"),
    }
    saved = again / "teachers" / "audio_cnn"
    card = json.loads((saved / "config.json").read_text())["card"]
    assert card["source"] == f"reused from {entry} (fitted in run {tmp_path / 'f1'})"
    assert f"fitted in run {again}" not in json.dumps(card)
    marker = checkpoint.read_marker(saved)
    assert marker["fitted_in"] == str(tmp_path / "f1") and marker["reused_from"] == str(entry)
    assert [f["speakers"] for f in marker["fit_sets"]] == [["09"]]
    # the first run's own copy says it was fitted there
    first = json.loads((tmp_path / "f1" / "teachers" / "audio_cnn" / "config.json").read_text())["card"]
    assert first["source"] == f"fitted in run {tmp_path / 'f1'}"


def test_weights_liser_did_not_write_are_a_loud_warning_and_a_flag(rav, tmp_path, capsys):  # noqa: F811
    first = recipe(tmp_path, rav, FOLD1, "f1.yaml")
    assert main(["run", str(first), f"run_dir={tmp_path / 'f1'}"]) == 0
    foreign = tmp_path / "foreign"
    shutil.copytree(tmp_path / "f1" / "teachers" / "audio_cnn", foreign)
    save_file(load_file(str(foreign / "model.safetensors")), str(foreign / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "card"}))
    assert checkpoint.read_marker(foreign) is None
    capsys.readouterr()
    assert main(["run", str(first), f"teachers.0.checkpoint={foreign}", f"run_dir={tmp_path / 'run'}"]) == 0
    assert any(ln.startswith("!!! flagged: ") and "unverified_teacher" in ln for ln in capsys.readouterr().out.splitlines())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "unverified_teacher" in metrics["flags"]
    assert any(f"{foreign} is not marked as written by LiSER" in w and "cannot check which speakers or clips" in w
               for w in metrics["warnings"])

    # with a card but unmarked weights: the card is checked (the leak is caught), the rest flagged
    (foreign / "config.json").write_text(json.dumps(config))
    third = recipe(tmp_path, rav, FOLD3, "f3.yaml")
    assert main(["run", str(third), f"teachers.0.checkpoint={foreign}", f"run_dir={tmp_path / 'f3'}"]) == 2
    assert "was fitted on test speaker(s) 09" in one_line_error(capsys)


class _Wrapper(Teacher):
    """A pretrained teacher holding another loaded from a LiSER checkpoint (as av_fusion holds
    its branches): it states no fit set of its own."""

    pretrained = True

    def __init__(self, label_space, inner, registry):
        super().__init__()
        self.inner = load_component(inner, registry, kind="teacher")
        self.label_space, self.sample_rate = self.inner.label_space, self.inner.sample_rate
        self.embedding_dim = self.inner.embedding_dim
        self.card = TeacherCard(name="wrapped", modality="audio", backbone="a wrapper", label_space=self.label_space.name)

    def forward(self, batch):
        return self.inner(batch)


class _WrapperPlugin:
    @hookimpl
    def liser_register_teachers(self, registry):
        registry.register("wrapped", lambda label_space, inner: _Wrapper(label_space, inner, registry), modality="audio")


def test_a_checkpoint_inside_a_teacher_is_checked_as_if_the_recipe_named_it(rav, tmp_path):  # noqa: F811
    """The leak guard reads the fit sets of every teacher checkpoint a teacher loads (an
    av_fusion branch, a plugin's wrapper), from its weights: refused, or flagged, as when
    teachers.N.checkpoint names it. Before, only the outer teacher's card was read."""
    assert main(["run", str(recipe(tmp_path, rav, FOLD1, "f1.yaml")), f"run_dir={tmp_path / 'f1'}"]) == 0
    host = load_plugins()
    host.add("wrapper", _WrapperPlugin())
    third = recipe(tmp_path, rav, FOLD3, "f3.yaml")

    def fold3(inner, name):
        return run(str(third), [f"teachers=[{{name: wrapped, options: {{inner: {inner}}}}}]", f"run_dir={tmp_path / name}"],
                   host=host)

    inner = tmp_path / "inner"
    shutil.copytree(tmp_path / "f1" / "teachers" / "audio_cnn", inner)
    with pytest.raises(ConfigError, match="teacher 'wrapped' was fitted on test speaker.s. 09"):
        fold3(inner, "a")
    config = json.loads((inner / "config.json").read_text())
    (inner / "config.json").write_text(json.dumps(config | {"card": config["card"] | {"fit_sets": []}}))
    with pytest.raises(ConfigError, match="its card's fit sets are not the ones its weights record") as err:
        fold3(inner, "b")
    assert err.value.key == "teachers.0.options"
    # weights LiSER did not write, without a card: run, loudly, and flagged
    save_file(load_file(str(inner / "model.safetensors")), str(inner / "model.safetensors"), metadata={"format": "pt"})
    (inner / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "card"}))
    ctx = fold3(inner, "c")
    assert "unverified_teacher" in ctx.flags
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_run_resumed_under_other_code_is_flagged_mixed_code(run_tiny, tmp_path):
    """Each session records its code (state/run.json); a run continued under another LiSER or
    plugin version or commit is flagged mixed_code in its metrics (every table shows it)."""
    ctx = run_tiny()
    state_file = ctx.run_dir / "state" / "run.json"
    state = json.loads(state_file.read_text())
    assert state["sessions"][-1]["code"] and "liser=" in state["sessions"][-1]["code"]
    assert "mixed_code" not in json.loads((ctx.run_dir / "metrics.json").read_text())["flags"]
    # as if it had stopped before evaluating, under an older LiSER
    state.update(status="running", completed=[s for s in state["completed"] if s != "evaluate"])
    state["sessions"][-1]["code"] = "liser=0.0.1@0123456789ab"
    state_file.write_text(json.dumps(state))
    again = run_tiny()
    metrics = json.loads((again.run_dir / "metrics.json").read_text())
    assert "mixed_code" in metrics["flags"]
    assert any("resumed under other code: its earlier stages ran with liser=0.0.1@0123456789ab" in w
               for w in metrics["warnings"])


def test_files_named_by_path_and_the_corpus_are_checked_by_content(rav, tmp_path, capsys):  # noqa: F811
    """A recipe names a teacher checkpoint by path: a file swapped under it is another input.
    The same command no longer says "nothing to do", summaries do not average the two, and a
    copy or repeat of a run is counted once. A corpus file changed under an unfinished run: its
    resume is refused (its earlier stages saw the data as it was)."""
    import liser_core
    from liser_plugins.corpora import fixtures

    r = recipe(tmp_path, rav, "fold: 3, label_fraction: 0.5, teacher_speakers: [4]")
    liser_core.run(r, [f"run_dir={tmp_path / 'fit0'}"])
    liser_core.run(r, [f"run_dir={tmp_path / 'fit1'}", "seed=1"])
    ck = tmp_path / "ck"
    shutil.copytree(tmp_path / "fit0" / "teachers" / "audio_cnn", ck)
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["run", str(r), f"run_dir={a}", f"teachers.0.checkpoint={ck}"]
    assert main(args) == 0 and main(args) == 0
    assert "holds a finished run of this recipe: nothing to do" in capsys.readouterr().err
    shutil.copy2(tmp_path / "fit1" / "teachers" / "audio_cnn" / "model.safetensors", ck / "model.safetensors")
    assert main(args) == 2  # the same path, other weights: not "nothing to do"
    assert "but teachers.0.checkpoint changed since it started" in one_line_error(capsys)
    assert main(["run", str(r), f"run_dir={b}", f"teachers.0.checkpoint={ck}"]) == 0
    capsys.readouterr()
    assert main(["summarize", str(a), str(b), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert len(groups) == 2 and all("inputs.teachers.0.checkpoint" in g["differs"] for g in groups)
    shutil.copytree(a, tmp_path / "acopy")
    assert main(["summarize", str(a), str(a), str(tmp_path / "acopy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(g["runs"]) for g in out["groups"]] == [1]
    assert [s["reason"].split(" (")[1].split(")")[0] for s in out["skipped"]] == [
        "given twice", "a copy of it: the same liser-run.json and metrics.json"]

    splits = json.loads((b / "splits.json").read_text())["splits"]
    clip = splits["test"]["clips"][0]["id"]
    wav = next(rav.rglob(f"{clip}.wav"))
    before = wav.read_bytes()
    # a finished run is "nothing to do" only on the data it ran on (it was, whatever the files held)
    again = ["run", str(r), f"run_dir={b}", f"teachers.0.checkpoint={ck}"]
    try:
        fixtures.write_wav(wav, rate=16000, seconds=0.4, freq=997, seed=7)
        assert main(again) == 2
        assert (f"holds a finished run of this recipe, but the corpus changed since it ran: 1 clip(s) differ (e.g. test "
                f"clip {clip} has other content or label)") in one_line_error(capsys, refused=False)
        gone = next(c["id"] for c in splits["unlabeled"]["clips"])
        moved = next(rav.rglob(f"{gone}.wav"))
        moved.rename(tmp_path / "aside.wav")
        assert main(again) == 2
        err = one_line_error(capsys, refused=False)  # one clip fewer in the pool: it is split anew
        assert re.search(r"but the corpus changed since it ran: (\d+) clip\(s\) differ", err).group(1) not in ("0", "1")
        (tmp_path / "aside.wav").rename(moved)
    finally:
        wav.write_bytes(before)
    assert main(again) == 0  # the data as it was: nothing to do again
    assert "holds a finished run of this recipe: nothing to do" in capsys.readouterr().err

    state = json.loads((b / "state" / "run.json").read_text())
    assert state["corpus_files"] is True
    (b / "state" / "run.json").write_text(json.dumps({**state, "status": "interrupted"}))  # as if stopped
    try:
        fixtures.write_wav(wav, rate=16000, seconds=0.4, freq=997, seed=7)  # other content, same name
        assert main(["run", "--resume", str(b)]) == 2
        err = one_line_error(capsys, refused=False)
        assert f"the corpus changed since this run started: 1 clip(s) of its splits differ (e.g. test clip {clip} " \
               "has other content or label)" in err
    finally:
        wav.write_bytes(before)


def test_every_local_file_a_recipe_names_is_recorded_by_content(tmp_path, monkeypatch):
    """A teacher checkpoint and any component option naming a local file or folder (a local
    model folder for hf_speech, a weights file) are inputs by content; a Hub id by the commit
    the local Hugging Face cache resolves it to (none when it is not cached); a plain string is
    not an input; a file changed under the same path, or a newer revision of a Hub id in the
    cache, changes its record."""
    from huggingface_hub import constants

    from liser_common.provenance import changed_inputs, input_digests

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache: the Hub id is not in it

    model = tmp_path / "wavlm"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"one")
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"w")
    cfg = {"teachers": [{"name": "hf_speech", "options": {"model": str(model), "pooling": "mean"}},
                        {"name": "face_cnn", "checkpoint": str(ck), "options": {"model": "microsoft/wavlm-base-plus"}}],
           "student": {"name": "logmel_cnn", "options": {"channels": [4, 8]}}}
    before = input_digests(cfg)
    assert sorted(before) == ["teachers.0.options.model", "teachers.1.checkpoint"]
    (model / "model.safetensors").write_bytes(b"two")  # the same folder, other weights
    after = input_digests(cfg)
    assert changed_inputs(before, after) == ["teachers.0.options.model"] and changed_inputs(None, after) == []
    # the Hub id, once in the cache (the layout huggingface_hub writes: refs/main names the snapshot)
    repo = tmp_path / "hub" / "models--microsoft--wavlm-base-plus"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    cached = input_digests(cfg)
    assert cached["teachers.1.options.model"] == "hub@" + "a" * 40
    from liser_common.provenance import hub_snapshot

    assert hub_snapshot("hf-hub:microsoft/wavlm-base-plus") == "a" * 40  # timm's way of naming a Hub id
    assert hub_snapshot("not a hub id") is None and hub_snapshot("org/not-cached") is None
    (repo / "refs" / "main").write_text("b" * 40)  # `huggingface-cli download` fetched a newer revision
    assert changed_inputs(cached, input_digests(cfg)) == ["teachers.1.options.model"]
    cfg["teachers"][1]["options"]["revision"] = "a" * 40  # pinned to a commit: that snapshot, when it is there
    assert "teachers.1.options.model" not in input_digests(cfg)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    assert input_digests(cfg)["teachers.1.options.model"] == "hub@" + "a" * 40


def test_a_grid_reruns_a_combination_whose_corpus_changed(rav, tmp_path, capsys):  # noqa: F811
    """A finished combination counts as done only on the corpus as it is now: a clip's file
    changed since it ran makes it stale (listed with the clip), and the same files again make
    it done again. A generated corpus (no clip read from a file) is not listed again: it is a
    function of the recipe and the code, compared already."""
    import yaml

    from liser_core import load_plugins
    from liser_tools.bench import load_grid, run_grid

    r = recipe(tmp_path, rav, "fold: 3, label_fraction: 0.5, teacher_speakers: [4]")
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"recipe": str(r), "repeat": ["seed"], "axes": {"seed": {"s0": ["seed=0"]}}}))
    out = tmp_path / "out"
    assert run_grid(load_grid(grid, out), load_plugins())["ran"] == 1
    clip = json.loads((out / "runs" / "seed-s0" / "splits.json").read_text())["splits"]["test"]["clips"][0]["id"]
    wav = next(rav.rglob(f"{clip}.wav"))
    before = wav.read_bytes()
    capsys.readouterr()
    try:
        fixtures.write_wav(wav, rate=16000, seconds=0.4, freq=997, seed=7)
        assert main(["bench", str(grid), "-o", str(out), "--list"]) == 0
        assert (f"stale  seed=s0  (the corpus changed since it ran (1 clip(s) differ, e.g. test clip {clip} has other "
                "content or label))") in capsys.readouterr().out
    finally:
        wav.write_bytes(before)
    assert main(["bench", str(grid), "-o", str(out), "--list"]) == 0
    listed = capsys.readouterr()
    assert re.search(r"^done +seed=s0$", listed.out, re.M) and not listed.err  # the corpus is listed quietly
    from liser_core.engine import data_changes

    state = json.loads((out / "runs" / "seed-s0" / "state" / "run.json").read_text())
    assert state["corpus_files"] is True
    # no registries: listing the corpus would fail; a generated corpus is never listed
    assert data_changes(out / "runs" / "seed-s0", None, None, {**state, "corpus_files": False}) == []


def test_what_changes_results_changes_the_fingerprint():
    """float16 teacher outputs (store_dtype) train another student: another recipe for the
    fingerprint, summaries and grids (they were grouped as one); where outputs are cached, the
    thread count and the run directory are not."""
    from liser_common.provenance import fingerprint

    base = {"seed": 0, "store": "/a", "store_dtype": "float32", "threads": 1, "run_dir": "runs/a"}
    assert fingerprint({**base, "store_dtype": "float16"}) != fingerprint(base)
    assert fingerprint({**base, "store": "/b", "threads": 2, "run_dir": "runs/b"}) == fingerprint(base)


def test_a_key_at_its_schema_default_leaves_the_fingerprint():
    """A value written out at its default is the same recipe as one leaving it out; so is a
    recipe recorded before LiSER had the key (its default keeps the old behaviour): finished
    runs and leaderboard rows are not made stale by a new setting. Defaults inside typed lists
    (each teacher block, each loss) count too; another value is another recipe."""
    from omegaconf import OmegaConf

    from liser_common.provenance import comparable, fingerprint, without_defaults
    from liser_core.config import RecipeConfig, load_recipe

    base = load_recipe("recipes/synth_kd.yaml")
    written = load_recipe("recipes/synth_kd.yaml", [
        "store_dtype=float32", "teachers.0.allow_test_overlap=false", "distil.losses.1.weight=0.5", "validation.source=none"])
    assert fingerprint(written) == fingerprint(base)
    for change in ("store_dtype=float16", "teachers.0.allow_test_overlap=true", "distil.losses.1.weight=0.4"):
        assert fingerprint(load_recipe("recipes/synth_kd.yaml", [change])) != fingerprint(base), change
    # a record from before the schema had `validation` and teachers' `online` reads the same
    old = comparable(base)
    del old["validation"]
    for t in old["teachers"]:
        del t["online"]
    assert without_defaults(old, RecipeConfig) == without_defaults(comparable(base), OmegaConf.get_type(base))
