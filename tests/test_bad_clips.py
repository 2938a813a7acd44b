"""Lazily loaded corpora and the bad-clip policy (skip: logged and reported; raise: stops)."""

import dataclasses
import json

import pytest

from liser_core import hookimpl, load_plugins
from liser_core.data import BadClipError
from liser_plugins.synth_av import synth_av

BAD = {"unl00_happy_0": "silent", "unl01_sad_0": "unreadable: not a wav file", "tst00_angry_0": "zero length"}


class LazyCorpus:
    """synth_av with audio loaded on demand; three clips are broken."""

    name = "lazy_synth"

    def __init__(self, seed: int = 0):
        self.inner = synth_av(seed=seed, seconds=0.5, frames=4, teacher_speakers=2, labeled_speakers=1,
                              unlabeled_speakers=2, test_speakers=1, teacher_clips=1, labeled_clips=1,
                              unlabeled_clips=1, test_clips=1)
        self.label_space = self.inner.label_space
        self.loads = 0

    def split(self, role):
        return [dataclasses.replace(c, audio=None, path=f"/data/{c.clip_id}.wav", seconds_hint=0.5)
                for c in self.inner.split(role)]

    def load(self, clip):
        self.loads += 1
        if clip.clip_id in BAD:
            raise BadClipError(clip.clip_id, clip.path, BAD[clip.clip_id])
        full = {c.clip_id: c for s in ("teacher", "labeled", "unlabeled", "test") for c in self.inner.split(s)}
        return dataclasses.replace(clip, audio=full[clip.clip_id].audio)


class LazyPlugin:
    @hookimpl
    def liser_register_datasets(self, registry):
        registry.register("lazy_synth", LazyCorpus)


def test_skip_policy_completes_and_reports_each_bad_clip(run_tiny):
    host = load_plugins()
    host.add("lazy", LazyPlugin())
    ctx = run_tiny(host=host, overrides=["data.name=lazy_synth", "data.options={}"])
    assert ctx.corpus.loads > 0
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["diagnostics"]["skipped_clips"] == BAD
    n_test = len(ctx.corpus.split("test"))
    assert metrics["student"]["num_clips"] == n_test - 1
    assert "tst00_angry_0" not in next(e for e in ctx.evaluations if e.model == "student").clip_ids
    log = (ctx.run_dir / "log.txt").read_text()
    assert "/data/unl01_sad_0.wav: unreadable: not a wav file" in log


def test_raise_policy_stops_naming_file_and_reason(run_tiny):
    host = load_plugins()
    host.add("lazy", LazyPlugin())
    with pytest.raises(BadClipError, match=r"/data/unl0\d_\w+_0\.wav: (silent|unreadable)"):
        run_tiny(host=host, overrides=["data.name=lazy_synth", "data.options={}", "data.bad_clips=raise"])


def test_policy_value_is_validated(liser_host):
    from liser_core import ConfigError
    from liser_core.engine import prepare_config

    with pytest.raises(ConfigError) as e:
        prepare_config("recipes/synth_kd.yaml", ["data.bad_clips=ignore"], liser_host)
    assert e.value.key == "data.bad_clips"
