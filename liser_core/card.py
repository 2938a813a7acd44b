"""Model cards for saved students: ``student/README.md`` in the Hugging Face Hub's format.

Written from the run's own records (``metrics.json``, ``config.yaml``, ``splits.json`` and the
student's ``config.json``), never by hand: YAML metadata made by huggingface_hub's
``ModelCardData`` (library, tags, labels, ``model-index`` results with dataset, split and
protocol), then the prose a reader needs: intended use, training data and teachers with their
cards, the label space, limitations, how to load it.

This module is in ``liser_core`` (the layer of the saved-component formats) so that the
``run_dir`` plugin, which writes the card at the end of a run, and :mod:`liser_core.hub`, which
pushes it, need nothing from ``liser_tools`` (docs/architecture.md, "Where things live").
``liser_tools.card`` re-exports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from liser_common import typedyaml

METRICS = (("accuracy", "accuracy", "WA (accuracy)", None), ("uar", "recall", "UAR (mean per-class recall)", "macro"),
           ("macro_f1", "f1", "macro-F1", "macro"))


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text()) if path.suffix == ".json" else typedyaml.safe_load(path.read_text())


_PROTOCOL_KEYS = ("corpus", "protocol", "fold", "label_fraction", "pool")


def _protocol(config: dict) -> str:
    """The splits a run used, as the recipe chose them: the corpus's protocol keys, each part of a
    corpus assembled from parts (``cross_corpus``: ``test: ravdess (fold=1)``), and the seed."""
    opts = (config.get("data") or {}).get("options") or {}
    parts = [f"{k}={opts[k]}" for k in _PROTOCOL_KEYS if k in opts]
    for role, part in (opts.get("parts") or {}).items() if isinstance(opts.get("parts"), dict) else ():
        if isinstance(part, dict):
            sub = part.get("options") or {}
            keys = [f"{k}={sub[k]}" for k in _PROTOCOL_KEYS if k in sub]
            keys += [f"split={part['split']}"] if part.get("split") else []
            parts.append(f"{role}: {part.get('name', '?')}" + (f" ({', '.join(keys)})" if keys else ""))
    if "seed" in config:
        parts.append(f"seed={config['seed']}")
    return ", ".join(parts) or "the corpus's default splits"


def _fitted_on(card: dict) -> str:
    """Where a teacher was fitted: its fit sets (corpus, split, clips, speakers) and, for weights
    it did not fit in this run, where they come from (a checkpoint, the store)."""
    fits = card.get("fit_sets") or []
    text = "; ".join(
        f"{f['corpus']}[{f['split']}], {f['clips']} clips of {len(f['speakers'])} speakers"
        + (f" ({', '.join(map(str, f['speakers']))})" if 0 < len(f["speakers"]) <= 6 else "") for f in fits)
    text = text or ", ".join(card.get("trained_on") or []) or "unknown"
    source = str(card.get("source") or "")
    return f"{text}; {source}" if source.startswith(("fitted in run", "reused from")) or (source and not fits) else text


def model_card(run_dir: str | Path, *, repo_id: str | None = None, config: dict | None = None) -> str:
    """The model card of ``run_dir/student`` as text (YAML front matter + Markdown).
    ``config``: the run's recipe (the engine passes the one it ran); by default the run's
    ``config.yaml``, refused when edited since the run (:func:`liser_common.rundir.run_recipe`)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from liser_common.errors import UsageError
    from liser_common.rundir import changed_since_written, run_recipe

    run_dir = Path(run_dir)
    if changed_since_written(run_dir, "metrics.json"):  # the card states its scores: the run's, or none
        raise UsageError(f"{run_dir / 'metrics.json'} was changed since the run wrote it (.liser-written.json records "
                         "another SHA-256): a model card is made from the run's own scores; put it back")
    metrics = _read(run_dir / "metrics.json") or {}
    config = (config if config is not None else run_recipe(run_dir)) or {}
    student_cfg = _read(run_dir / "student" / "config.json") or {}
    splits = (_read(run_dir / "splits.json") or {}).get("splits", {})
    student = metrics.get("student") or {}
    corpus = metrics.get("corpus") or (config.get("data") or {}).get("name", "unknown")
    labels = list((student_cfg.get("label_space") or {}).get("classes") or metrics.get("label_space") or [])
    split = metrics.get("split", "test")
    protocol = _protocol(config)
    # the student as PLUGIN:NAME from the run's recipe; ids and tags take the bare name
    qualified = (config.get("student") or {}).get("name") or student_cfg.get("name", "student")
    bare = str(qualified).rpartition(":")[2]
    name = repo_id or f"liser-{bare}-{corpus}"
    flags = metrics.get("flags") or []
    # the flags travel with the numbers: in each metric's name, which the Hub shows beside its value
    flagged = f" [flagged: {', '.join(flags)}]" if flags else ""
    results = [
        EvalResult(task_type="audio-classification", task_name="Speech emotion recognition", dataset_type=corpus,
                   dataset_name=corpus, dataset_split=split, dataset_config=protocol, metric_type=mtype,
                   metric_value=round(float(student[key]), 4), metric_name=label + flagged,
                   metric_args={"average": avg} if avg else None)
        for key, mtype, label, avg in METRICS if key in student
    ]
    data = ModelCardData(
        library_name="liser", pipeline_tag="audio-classification", license="other", model_name=name,
        tags=["audio-classification", "speech-emotion-recognition", "knowledge-distillation", "liser",
              f"student-{bare}", *(f"liser-flagged-{f}" for f in flags)],
        datasets=[corpus], metrics=["accuracy", "recall", "f1"], eval_results=results or None,
        liser=_provenance(metrics, student_cfg, corpus, split),
    )
    teachers = metrics.get("teachers") or {}
    t_rows = []
    for key, t in teachers.items():
        card = t.get("card") or {}
        t_rows.append(f"| {key} | {card.get('modality', '?')} | {card.get('backbone', '?')} | {card.get('licence', '?')} | "
                      f"{_fitted_on(card)} | {t.get('uar', float('nan')):.3f} |")
    speakers = {s: len(v.get("speakers", [])) for s, v in splits.items()}
    clips = {s: len(v.get("clips", [])) for s, v in splits.items()}
    warnings = metrics.get("warnings") or []
    score = (f"UAR {student['uar']:.3f}{_ci(student, 'uar')}, WA {student['accuracy']:.3f}{_ci(student, 'accuracy')}, "
             f"macro-F1 {student['macro_f1']:.3f} on the {split} split ({student.get('num_clips', '?')} clips"
             f"{_ci_note(student)})") if student else "no test score recorded"
    body = f"""
# {name}

A lightweight audio-only speech emotion recognition model ({qualified},
{student_cfg.get('num_parameters', 0):,} parameters, {student_cfg.get('sample_rate', '?')} Hz mono input), trained
with LiSER (Leveraging unlabeled audio-visual data in SER) by knowledge distillation from large
teachers on unlabeled audio-visual clips. Its test score: {score}.
{_flag_lines(flags)}

## Intended use

Research on speech emotion recognition: one of {len(labels)} emotion labels for a short utterance
of speech. Not for decisions about people: emotion recognition from speech is unreliable across
speakers, languages, recording conditions and cultures, and this model has not been evaluated on
any of those shifts.

## Labels

{", ".join(f"`{c}`" for c in labels)}

## Training data and protocol

- Corpus: `{corpus}`, protocol: {protocol}. Splits as used (speakers / clips):
  {"; ".join(f"{s} {speakers[s]} / {clips[s]}" for s in speakers) or "not recorded"}.
- Scores are speaker-independent when no speaker of the test split appears in training
  (LiSER's default; it warns otherwise). WA is accuracy, UAR the mean per-class recall.
- Recipe fingerprint: `{metrics.get('recipe_fingerprint', '')[:16]}` (the recipe: the run's `config.yaml`;
  `recipe.yaml` beside this card where `liser push` uploaded it).
- Code: {_code_line(metrics.get('code'))}.

## Teachers

| teacher | modality | backbone | licence | fitted on | test UAR |
|---|---|---|---|---|---|
{chr(10).join(t_rows) or "| none | | | | | |"}
{quantization_section(run_dir / "student")}
## Limitations

- Acted emotions (RAVDESS, CREMA-D) or synthetic data (`synth_av`) differ from spontaneous speech.
- The score above is from one run ({_one_run(config)}); compare runs as mean ± std
  (`liser summarize`).
{chr(10).join("- Run warning: " + w for w in warnings[:5])}

## How to use

```python
from liser_core import Student
student = Student.from_pretrained("{repo_id or 'PATH_OR_HUB_ID'}")  # a folder or a Hub id
```

```bash
liser predict {repo_id or 'PATH_OR_HUB_ID'} clip.wav      # per-window and overall probabilities
liser serve {repo_id or 'PATH_OR_HUB_ID'}                 # HTTP: POST /predict, GET /health, a demo page
```
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


#: Said under the operators left in float (the int8 file keeps no node names, see liser_tools.quantize)
FLOAT_NAMES = "operator names are those of the float32 file; the int8 file keeps no node names"


def quantization_change(record: dict) -> str:
    """``", UAR +0.8 points, WA +0.8 points"``: int8 against float32 on the test split, from a
    ``quantization.json`` record (its drops, negated; never ``-0.0``)."""
    uar, wa = (f"{round(-record[k], 1) + 0.0:+.1f}" for k in ("uar_drop_points", "wa_drop_points"))
    return f", UAR {uar} points, WA {wa} points"


def quantization_record(student_dir: str | Path) -> dict | None:
    """``student/quantization.json`` (written by ``liser export --quantize int8``) when it was
    measured on the weights the folder holds now (its ``weights_sha256``); None when there is
    none, or it describes a student trained again or replaced since (or records no weights)."""
    from .export import weights_digest

    try:
        record = _read(Path(student_dir) / "quantization.json")
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "int8" not in record:
        return None
    return record if record.get("weights_sha256") == weights_digest(student_dir) else None


def quantization_section(student_dir: Path) -> str:
    """The card's "Quantization" section from ``student/quantization.json`` (written by
    ``liser export --quantize int8``, :mod:`liser_tools.quantize`): float32 against int8 side by
    side, and every operator left in float with its reason; empty when never quantized, or when
    the record describes other weights (:func:`quantization_record`)."""
    record = quantization_record(student_dir)
    if record is None:
        return ""
    f, q = record["float32"], record["int8"]
    test = "uar" in f
    rows = [f"| {k} | `{r['file']}` | {r['bytes'] / 1024:,.0f} KB | {r['ms_3s_1thread']:.2f} | "
            + (f"{r['uar']:.3f} | {r['accuracy']:.3f} |" if test else "n/a | n/a |") for k, r in (("float32", f), ("int8", q))]
    ops = record.get("ops") or {}
    lines = ["int8: " + (", ".join(f"{op} x{n}" for op, n in sorted((ops.get("int8") or {}).items())) or "nothing")]
    lines += [f"left in float: {o['op']} {o['name']} ({o['scope'] or 'top level'}): {o['why']}" for o in ops.get("float", [])]
    if ops.get("float"):
        lines.append(FLOAT_NAMES)
    drop = quantization_change(record) if test else ""
    return f"""
## Quantization

`liser export --quantize int8` (onnxruntime, {record['mode']}; weights {record['weights']}; activations
{record['activations']}; calibration: {record['calibration']}). Speed: {record['speed']}.
Test: {record['test']}.

| model | file | size | ms / 3 s | UAR | WA |
|---|---|---|---|---|---|
{chr(10).join(rows)}

int8 against float32: size {record['size_ratio']:.2f}x, speed {record['speedup']:.2f}x{drop}.
{chr(10).join("- " + line for line in lines)}
"""


def _one_run(config: dict) -> str:
    """"seed 0, fold 3": the run's seed and fold, as its recipe set them."""
    fold = ((config.get("data") or {}).get("options") or {}).get("fold")
    return f"seed {config.get('seed', '?')}" + (f", fold {fold}" if fold is not None else ", one split")


def _code_line(code: Any) -> str:
    """The card's code line: each package's version, commit and dirty flag, or "not recorded"."""
    from liser_common.provenance import code_label

    if not isinstance(code, dict) or not code:
        return "not recorded (a run from before LiSER recorded its commit)"
    return ", ".join(f"`{name} {code_label(entry)}`" for name, entry in sorted(code.items()) if isinstance(entry, dict))


def _ci(entry: dict, metric: str) -> str:
    iv = (entry.get("intervals") or {}).get(metric) or {}
    return f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv.get("low") is not None else ""


def _ci_note(entry: dict) -> str:
    iv = (entry.get("intervals") or {}).get("uar") or {}
    if iv.get("low") is None:
        return ""
    return f"; 95 % intervals by a bootstrap over its {iv.get('speakers')} test speakers"


def _provenance(metrics: dict, student_cfg: dict, corpus: str, split: str) -> dict:
    """The card's machine-readable ``liser`` metadata: what exports, int8 records and ``liser
    serve`` carry of the run that made the student (:func:`student_provenance`)."""
    from liser_common.provenance import code_string

    code = metrics.get("code")
    student = metrics.get("student") or {}
    return {
        "weights_sha256": student_cfg.get("weights_sha256"),
        "recipe_fingerprint": metrics.get("recipe_fingerprint"),
        "code": code_string(code) if isinstance(code, dict) and code else None,
        "flags": list(metrics.get("flags") or []),
        "corpus": corpus, "split": split,
        "scores": {k: round(float(student[k]), 4) for k in ("uar", "accuracy", "macro_f1") if k in student},
    }


def student_provenance(student_dir: str | Path) -> dict:
    """The run a saved student comes from, as exports, int8 records and ``liser serve`` carry it:
    ``{"weights_sha256", "recipe_fingerprint", "code", "flags", "corpus", "split", "scores",
    "source"}``. From its run's ``metrics.json`` where the folder is ``RUN_DIR/student`` (and the
    run wrote it), else from the card's ``liser`` metadata (a folder copied or from the Hub);
    only when either describes *these* weights (``weights_sha256``). {} when none does: a student
    with no record of where it comes from is said to be one, never given another run's flags."""
    from liser_common.rundir import changed_since_written

    from .export import weights_digest

    student_dir = Path(student_dir)
    try:
        digest = weights_digest(student_dir)
    except Exception:  # noqa: BLE001 - no weights to match: nothing can be said of them
        return {}
    if digest is None:
        return {}
    student_cfg = _read(student_dir / "config.json") or {}
    run_dir = student_dir.resolve().parent
    metrics = _read(run_dir / "metrics.json") if (run_dir / "config.yaml").is_file() else None
    if isinstance(metrics, dict) and metrics.get("status") == "completed" and not changed_since_written(run_dir, "metrics.json"):
        corpus = metrics.get("corpus") or "unknown"
        out = _provenance(metrics, student_cfg, corpus, metrics.get("split", "test")) | {"source": str(run_dir / "metrics.json")}
        if out["weights_sha256"] == digest:
            return out
    try:
        text = (student_dir / "README.md").read_text()
        meta = typedyaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, UnicodeDecodeError, IndexError, ValueError, Exception):  # noqa: BLE001 - a card that is no card
        meta = None
    block = meta.get("liser") if isinstance(meta, dict) else None
    if isinstance(block, dict) and block.get("weights_sha256") == digest:
        return {**block, "flags": list(block.get("flags") or []), "source": str(student_dir / "README.md")}
    return {}


def _flag_lines(flags: list[str]) -> str:
    """The run's flags, each with its meaning: these scores are incomplete or not comparable."""
    if not flags:
        return ""
    from liser_core.guards import describe_flags

    lines = [f"**Flagged: {', '.join(flags)} -- these scores are incomplete or NOT a fair estimate (see the run's warnings):**", ""]
    return "\n".join(lines + [f"- `{line.split(':', 1)[0]}`:{line.split(':', 1)[1]}" if ":" in line else f"- `{line}`"
                               for line in describe_flags(flags)])


def write_model_card(run_dir: str | Path, *, repo_id: str | None = None, config: dict | None = None) -> Path:
    """Write ``run_dir/student/README.md`` (atomically) and return the path written. A card
    edited since LiSER wrote it (or one LiSER has no record of) is kept, and the new card goes
    to ``student/README.liser-new.md`` with a warning (:func:`liser_common.rundir.write_editable`)."""
    from liser_common.rundir import write_editable

    return write_editable(Path(run_dir), "student/README.md", model_card(run_dir, repo_id=repo_id, config=config))
