"""``run_dir`` logger: the run directory's own files.

``config.yaml`` (the resolved recipe, as the run started: a resume leaves it), ``manifest.json``
(versions, plugins, seed), ``history.jsonl`` (one line per epoch), ``confusion_<model>.csv/.png``,
``predictions.csv`` (every evaluated model's class and probabilities per test clip) and
``metrics.json`` (with WA/UAR per test speaker).
Every file is written atomically (temporary name, then rename). The student's model card
(``student/README.md``) is a user's to edit: one changed since LiSER wrote it is kept and the new
card goes beside it (:func:`liser_common.rundir.write_editable`).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import sys
import time

from omegaconf import OmegaConf

from liser_common.rundir import changed_since_written, inside, record_written, safe_name
from liser_core import hookimpl
from liser_core.checkpoint import atomic_write_json, atomic_write_text
from liser_core.config import components_record, qualified_config


def _protocol(corpus) -> dict | None:
    """``{"description", "fold", "folds"}`` of a corpus that made its splits by a protocol."""
    plan = getattr(corpus, "protocol", None)
    if plan is None or not hasattr(plan, "description"):
        return None
    return {"description": str(plan.description), "fold": getattr(plan, "fold", None), "folds": getattr(plan, "folds", None)}


class RunDirWriter:
    def __init__(self, confusion_png: bool = True):
        self.confusion_png = confusion_png
        self.started = time.time()

    @hookimpl
    def liser_run_start(self, run):
        import torch

        from liser_core import __version__

        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        started = now
        if run.resumed:  # when the run started, not this session: the session's start is `resumed`
            try:
                started = json.loads((run.run_dir / "manifest.json").read_text()).get("started") or now
            except (OSError, ValueError, AttributeError):
                started = now
        config_file = run.run_dir / "config.yaml"
        if not run.resumed or not config_file.is_file():  # the recipe as started: a resume keeps it
            # components as PLUGIN:NAME: what this file names cannot change with later installs
            atomic_write_text(config_file, OmegaConf.to_yaml(qualified_config(run.config, run.host.registries), resolve=True))
        atomic_write_json(
            run.run_dir / "manifest.json",
            {
                "liser": __version__,
                "code": run.code,  # LiSER's and plugin packages' version, git commit, dirty flag
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "torch": torch.__version__,
                "device": str(run.device),
                "seed": int(run.config.seed),
                "plugins": [
                    {"name": p.name, "package": p.distribution, "version": p.version, "status": p.status}
                    for p in run.host.plugins
                ],
                # each component's qualified name by recipe key: `--resume` builds these again
                "components": components_record(run.config, run.host.registries),
                "started": started,
                **({"resumed": now} if run.resumed else {}),
            },
        )
        if not run.resumed:  # a resumed run keeps the epochs logged before the interruption
            (run.run_dir / "history.jsonl").unlink(missing_ok=True)
            # an earlier run's record in this folder (--restart): from now on it says this run is going,
            # so that a run killed before its end is never read as the earlier one, finished
            # (summarize, a grid's board); a metrics.json edited by hand is not LiSER's to replace
            metrics = run.run_dir / "metrics.json"
            if metrics.is_file() and not changed_since_written(run.run_dir, "metrics.json"):
                atomic_write_json(metrics, {"status": "running", "recipe_fingerprint": run.fingerprint, "code": run.code,
                                            "note": "started afresh over an earlier run: the files beside this one "
                                                    "(predictions, confusions, student/) are the earlier run's until "
                                                    "this one ends"})
                record_written(run.run_dir, "metrics.json")

    @hookimpl
    def liser_epoch_end(self, run, stage, model, epoch, metrics):
        line = json.dumps({"stage": stage, "model": model, "epoch": epoch + 1, **metrics})
        path = run.run_dir / "history.jsonl"
        old = path.read_text() if path.is_file() else ""
        for prev in old.splitlines():  # one line per epoch (a resumed run replays the epochs done)
            try:
                d = json.loads(prev)
            except ValueError:
                continue
            if (d.get("stage"), d.get("model"), d.get("epoch")) == (stage, model, epoch + 1):
                return
        # rewritten whole and renamed, like every report: a kill never leaves half a line
        atomic_write_text(path, old + line + "\n")

    @hookimpl
    def liser_evaluation(self, run, result):
        classes = list(result.label_space.classes)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["true\\pred", *classes])
        for c, row in zip(classes, result.confusion.tolist()):
            w.writerow([c, *row])
        name = safe_name(result.model, "model")
        atomic_write_text(inside(run.run_dir, run.run_dir / f"confusion_{name}.csv"), buf.getvalue())
        if self.confusion_png:
            _confusion_png(inside(run.run_dir, run.run_dir / f"confusion_{name}.png"), result)

    @hookimpl(tryfirst=True)  # metrics.json and the card exist before other loggers end (they may upload them)
    def liser_run_end(self, run, results, error):
        by_role = {}
        for e in run.evaluations:
            by_role.setdefault(e.role + "s" if e.role == "teacher" else e.role, {})
        payload = {
            # Ctrl-C / SIGTERM (KeyboardInterrupt, TrainingInterrupted) leave a resumable run, as state/run.json says
            "status": ("interrupted" if isinstance(error, KeyboardInterrupt) else "failed") if error else "completed",
            "error": f"{type(error).__name__}: {error}" if error else None,
            "split": run.config.evaluate.split,
            "corpus": run.corpus.name if run.corpus else None,
            # the protocol's splits as the corpus made them: which fold of how many (summaries check coverage)
            "protocol": _protocol(run.corpus),
            "label_space": list(run.label_space.classes) if run.corpus else None,
            "metric_names": {"accuracy": "WA (accuracy)", "uar": "UA/UAR (mean per-class recall)", "macro_f1": "macro-F1"},
            "student": None,
            "baseline": None,
            "teachers": {},
            "diagnostics": run.diagnostics,
            "stage_seconds": run.stage_seconds,
            "recipe_fingerprint": run.fingerprint,
            "code": run.code,
            "flags": run.flags,
            "warnings": run.warnings,
            "label_maps": run.label_map_report,
            "components": _components(run),
        }
        for e in run.evaluations:
            entry = {**e.metrics, "num_parameters": e.num_parameters, "num_clips": len(e.clip_ids),
                     "per_speaker": e.per_speaker, "intervals": _speaker_intervals(e)}
            if e.role == "teacher":
                entry["card"] = run.teachers[e.model].card.to_dict(content=False)
                payload["teachers"][e.model] = entry
            else:
                payload[e.role] = entry
        if run.evaluations:
            atomic_write_text(run.run_dir / "predictions.csv", predictions_csv(run.evaluations))
        atomic_write_json(run.run_dir / "metrics.json", payload)
        record_written(run.run_dir, "metrics.json")  # summaries and cards tell a hand edit from the run's record
        if not error and (run.run_dir / "student" / "config.json").is_file():
            # the student's model card, from the records just written and the recipe this run ran
            # (config.yaml is the recipe as started; a hand edit of it since does not reach the card)
            from liser_common.provenance import plain_config
            from liser_core.card import write_model_card

            write_model_card(run.run_dir, config=plain_config(qualified_config(run.config, run.host.registries)))


def _speaker_intervals(e) -> dict:
    """95 % intervals of WA and UAR by a bootstrap over the run's test speakers (whole speakers
    resampled: their clips are not independent); empty without labels or speakers."""
    if e.labels is None or not e.speakers:
        return {}
    from liser_common.stats import speaker_bootstrap

    preds, k = e.probs.argmax(-1).tolist(), e.probs.shape[-1]
    out = {}
    for metric in ("accuracy", "uar"):
        iv = speaker_bootstrap(e.labels.tolist(), preds, e.speakers, metric=metric, num_classes=k, n_resamples=1000)
        finite = iv.low == iv.low  # NaN (one speaker): no interval, null in the JSON
        out[metric] = {"low": iv.low if finite else None, "high": iv.high if finite else None,
                       "speakers": iv.n, "method": iv.method,
                       "confidence": iv.confidence}
    return out


def predictions_csv(evaluations) -> str:
    """Every evaluated model's prediction for every clip it scored: ``model, role, split, clip,
    speaker, label, predicted`` and the probability of each class (``p_<class>``), in the
    student's label space -- what per-clip analyses and significance tests start from."""
    classes = list(evaluations[0].label_space.classes)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "role", "split", "clip", "speaker", "label", "predicted", *(f"p_{c}" for c in classes)])
    for e in evaluations:
        probs = e.probs.detach().float().cpu()
        labels = e.labels.tolist() if e.labels is not None else [None] * len(e.clip_ids)
        speakers = e.speakers or [""] * len(e.clip_ids)
        for clip, speaker, y, p in zip(e.clip_ids, speakers, labels, probs.tolist()):
            pred = max(range(len(p)), key=p.__getitem__)
            w.writerow([e.model, e.role, e.split, clip, speaker, "" if y is None else classes[y], classes[pred],
                        *(f"{x:.6g}" for x in p)])
    return buf.getvalue()


def _confusion_png(path, result) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = result.confusion.numpy()
    classes = result.label_space.classes
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.55 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    m = result.metrics
    ax.set_title(f"{result.model}: WA {m['accuracy']:.3f}  UAR {m['uar']:.3f}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _components(run) -> dict:
    """Each component the run built, by its recipe key: its name, plugin and every option it was
    built with (the recipe's and the factory's defaults it left unset: ``{name: kl}`` ran at
    temperature 4.0, which the recipe does not say)."""
    objs = [run.corpus, *run.teachers.values(), run.student, *(loss for _, loss in run.losses.values()), run.combiner,
            *(a for augs in run.augment.values() for a in augs), *run.samplers.values()]
    out = {}
    for obj in objs:
        spec = getattr(obj, "liser_spec", None)
        if isinstance(spec, dict) and spec.get("key"):
            out[spec["key"]] = {"name": spec["name"], "plugin": spec.get("plugin"),
                                "options": {**spec.get("defaults", {}), **(spec.get("options") or {})}}
    return out


@hookimpl
def liser_register_loggers(registry):
    registry.register("run_dir", RunDirWriter, summary="config, metrics.json, history, confusion matrices in the run directory")
