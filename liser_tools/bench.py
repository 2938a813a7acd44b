"""``liser bench GRID.yaml``: run every combination of a grid, then write the leaderboard.

A grid names a base recipe, overrides applied to every run, and *axes*: each axis maps a label
to the overrides that select it. Every combination of one label per axis is one run. Axes
listed under ``repeat`` (folds, seeds) are averaged over in the leaderboard::

    recipe: recipes/synth_kd.yaml
    overrides: [distil.epochs=10]
    store: true                     # teachers label each clip once across the whole grid
    repeat: [seed]
    axes:
      student:
        logmel_cnn: [student.name=logmel_cnn]
        ecapa_small: ["student={name: ecapa_tdnn, options: {channels: [64, 64, 64, 64, 192]}}"]
      seed:
        s0: [seed=0]
        s1: [seed=1]

Outputs in the grid's output folder: one run directory per combination, ``results.csv`` (one
row per model per run: the student, the labels-only baseline when enabled, and each teacher
evaluated directly), ``leaderboard.md`` (mean ± std over the repeat axes, best UAR first) and
``uar_by_<axis>.png`` when a ``plot_axis`` is given. Combinations whose run completed with the
same resolved recipe (and the same LiSER and plugin versions: ``recipe_fingerprint``) are
skipped, so a grid can be extended and resumed; a combination whose recipe changed since its
row was written (the grid's overrides, the base recipe, a plugin upgrade) is *stale*: it is run
again and its rows replaced, and the log names the keys that changed. Rows of combinations no
longer in the grid stay in ``results.csv`` but not on the leaderboard.

``key=value`` arguments after the grid apply after its axes (a key an axis sets is refused; an
element of a list an axis sets is found by name: :func:`after_axes`). Every combination to run
is validated before the first runs. Each row records the code that produced it (``code``: LiSER's
and plugin packages' version, git commit, dirty flag); rows of the same recipe from another
version or commit are ``other code``: rerun (``--rerun-code``) or kept (``--keep-code``, a board
row averaging different code is flagged ``mixed_code``) by explicit choice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from liser_common import typedyaml
from liser_common.metrics import mean_std
from liser_common.provenance import code_identity, code_string, plain_config
from liser_core.checkpoint import atomic_write_text
from liser_core.errors import ConfigError, LiserError, UsageError, one_line
from liser_core.guards import FLAGS, fold_coverage

log = logging.getLogger("liser.bench")

FIELDS = ["combination", "model", "role", "components", "accuracy", "uar", "macro_f1",
          "num_parameters", "train_seconds", "run_dir", "recipe_fingerprint", "flags",
          "label_fraction", "labeled_clips", "code", "teacher_identity", "row_check"]


def row_check(row: dict) -> str:
    """A results.csv row's check: sha256 over every column as the CSV holds it, but ``run_dir``
    (an output folder may move) and the check itself. Written with the row when its run ends and
    kept as read afterwards: a hand edit of any column (a parameter count, a fraction, a teacher
    identity that decides which teacher rows merge) no longer matches it."""
    text = json.dumps(["" if row.get(f) is None else str(row.get(f)) for f in FIELDS if f not in ("run_dir", "row_check")])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
#: What each flag a table can show means (leaderboard.md, efficiency.md, report.html): the
#: run-level flags of ``liser_core.guards.FLAGS``, with what a board adds to them.
FLAG_NOTES = {
    **FLAGS,
    "test_overlap": "a teacher of that run was fitted on test speakers or clips (`allow_test_overlap`); its "
                    "scores are NOT a fair estimate",
    "mixed_code": "the row averages runs of different code (LiSER or plugin version or git commit: the `code` "
                  "column of results.csv), or a run was resumed under other code than it started with (each "
                  "session's code is in its `state/run.json` `sessions`); rerun them with `liser bench GRID "
                  "--rerun-code` to compare like with like",
}


@dataclass
class Grid:
    recipe: str
    overrides: list[str]
    axes: dict[str, dict[str, list[str]]]
    repeat: list[str]
    store: bool | str  # true: OUTPUT/store; false: none; a folder (shared with other grids)
    output: Path
    plot_axis: str | None = None
    #: the axes that play the paper's roles (fraction, teachers, student): liser_tools.report
    report: dict[str, str] | None = None
    #: defaults for running it as a task graph (workers, partition, cpus_per_task, ...):
    #: liser_tools.taskgraph.EXECUTOR_KEYS
    executor: dict | None = None
    #: the grid file it was loaded from (None: made in code): which grid an output folder holds
    source: Path | None = None
    #: ``key=value`` arguments of ``liser bench GRID key=value``: applied after the axes
    #: (:func:`check_cli_overrides`, :func:`after_axes`)
    cli_overrides: list[str] = field(default_factory=list)
    #: combinations left out of the product: each ``{axis: label or [labels]}`` leaves out those
    #: that have one of its labels on every axis it names (:func:`_check_exclude`)
    exclude: list[dict[str, list[str]]] = field(default_factory=list)

    def store_dir(self) -> Path | None:
        """The teacher store every combination uses, or None."""
        if not self.store:
            return None
        return self.output / "store" if self.store is True else Path(self.store).expanduser()

    def combinations(self) -> list[tuple[dict[str, str], list[str]]]:
        names = list(self.axes)
        out = []
        for labels in itertools.product(*(list(self.axes[a]) for a in names)):
            chosen = dict(zip(names, labels))
            if any(all(chosen[a] in labs for a, labs in ex.items()) for ex in self.exclude):
                continue
            overrides = [o for a, lab in chosen.items() for o in self.axes[a][lab]]
            out.append((chosen, overrides))
        return out


def load_grid(path: str | Path, output: str | Path | None = None) -> Grid:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"grid {str(path)!r} does not exist")
    try:
        raw = typedyaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path}: invalid YAML: {one_line(exc)}") from None
    known = {"recipe", "overrides", "axes", "repeat", "store", "output", "plot_axis", "report", "executor", "exclude"}
    for key in raw:
        if key not in known:
            from liser_core.errors import close_matches

            raise ConfigError(str(key), f"unknown grid key (in {path})", close_matches(str(key), known))
    if "recipe" not in raw:
        raise ConfigError("recipe", f"missing required value (in {path})")
    recipe = Path(raw["recipe"]).expanduser()
    if not recipe.is_absolute():  # the grid file's folder first: the working directory only when it has none
        recipe = path.parent / recipe if (path.parent / recipe).exists() or not recipe.exists() else recipe
    recipe = recipe.resolve()  # absolute: a worker on another machine, or in another folder, reads the same file
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict) or not axes:
        raise ConfigError("axes", "needs at least one axis: {axis: {label: [overrides]}}")
    for a, labels in axes.items():
        if not isinstance(labels, dict) or not labels:
            raise ConfigError(f"axes.{a}", "must map labels to lists of overrides")
        for lab, ov in labels.items():
            if isinstance(ov, str):
                labels[lab] = [ov]
            elif not isinstance(ov, list) or not all(isinstance(o, str) for o in ov):
                raise ConfigError(f"axes.{a}.{lab}", "must be a list of key=value overrides")
            for text in labels[lab]:
                _check_placed(text, f"in {path}'s axis {a}, label {lab}")
    exclude = _check_exclude(raw.get("exclude"), axes, path)
    repeat = list(raw.get("repeat") or [])
    for r in repeat:
        if r not in axes:
            raise ConfigError("repeat", f"{r!r} is not an axis")
    plot_axis = raw.get("plot_axis")
    if plot_axis is not None and plot_axis not in axes:
        raise ConfigError("plot_axis", f"{plot_axis!r} is not an axis")
    report = raw.get("report")
    if report is not None:
        from liser_tools.report import ROLES

        if not isinstance(report, dict) or set(report) != set(ROLES):
            raise ConfigError("report", f"must name the axis of each role: {', '.join(f'{r}: AXIS' for r in ROLES)}")
        for role, axis in report.items():
            if axis not in axes:
                raise ConfigError(f"report.{role}", f"{axis!r} is not an axis")
    # absolute, like the recipe: tasks run in other processes and on other machines (Ray, Slurm)
    out = Path(output or raw.get("output") or Path("runs") / f"bench-{path.stem}").expanduser().absolute()
    store = raw.get("store", True)
    if not isinstance(store, (bool, str)) or store == "":
        raise ConfigError("store", f"{store!r}: give true (OUTPUT/store), false (no store) or a folder shared with "
                          f"other grids (in {path})")
    if isinstance(store, str):
        store = str(Path(store).expanduser().absolute())
    overrides = list(raw.get("overrides") or [])
    for text in overrides:
        _check_placed(text, f"in {path}'s overrides")
    grid = Grid(str(recipe), overrides, axes, repeat, store, out, plot_axis, report, executor=raw.get("executor"),
                source=path.resolve(), exclude=exclude)
    if not grid.combinations():
        raise ConfigError("exclude", f"leaves no combination of the axes to run (in {path})")
    return grid


def _check_exclude(raw: Any, axes: dict[str, dict[str, list[str]]], path: Path) -> list[dict[str, list[str]]]:
    """The grid's ``exclude:`` list, checked: each entry maps axes to one label or a list of
    labels of that axis (``{target: savee, fold: ["5", "6"]}``: SAVEE has 4 folds where RAVDESS
    has 6). A name that is no axis or label is refused, never matched against nothing."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("exclude", f"must be a list of {{axis: label or [labels]}} (in {path})")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not entry:
            raise ConfigError(f"exclude.{i}", f"must map axes to a label or a list of labels, got {entry!r} (in {path})")
        checked: dict[str, list[str]] = {}
        for axis, labels in entry.items():
            axis = str(axis)
            if axis not in axes:
                from liser_core.errors import close_matches

                raise ConfigError(f"exclude.{i}.{axis}", f"is not an axis (in {path})", close_matches(axis, list(axes)))
            labels = labels if isinstance(labels, list) else [labels]
            for lab in labels:
                if not isinstance(lab, (str, int, float, bool)) or str(lab) not in axes[axis]:
                    raise ConfigError(f"exclude.{i}.{axis}", f"{lab!r} is not a label of axis {axis} "
                                      f"(labels: {', '.join(map(str, axes[axis]))}; in {path})")
            checked[axis] = [str(lab) for lab in labels]
        out.append(checked)
    return out


#: which grid an output folder holds (its board, tables and figures are that grid's)
GRID_CLAIM = ".liser-grid.json"


def claim_output(grid: Grid) -> None:
    """An output folder holds one grid: the first driver records the grid file (or, for a grid
    made in code, its recipe) in ``OUTPUT/.liser-grid.json``; another grid is refused before
    anything is written (its board would replace the first's, whose rows stay in results.csv
    off the board). Editing the grid file in place is the same grid."""
    from liser_cache.files import atomic_write_json

    mine = {"grid": str(grid.source)} if grid.source is not None else {"recipe": str(Path(grid.recipe).resolve())}
    path = grid.output / GRID_CLAIM
    try:
        theirs = json.loads(path.read_text())
    except FileNotFoundError:
        theirs = None
    except (OSError, ValueError):
        theirs = {}
    if theirs is None or not isinstance(theirs, dict) or not theirs:
        grid.output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, mine)
        return
    if theirs != mine:
        other = theirs.get("grid") or theirs.get("recipe") or "?"
        raise UsageError(
            f"-o {grid.output} holds the results of another grid ({other}, recorded in {GRID_CLAIM}): this grid's "
            "board would replace its board and mix their rows; choose another output folder (-o), or, for the same "
            f"grid file moved or renamed, remove {path} to let this one adopt the folder"
        )


#: Recipe keys a grid sets itself, per combination: a value for them would be silently replaced.
PLACED = {"run_dir": "each combination runs in OUTPUT/runs/<combination> (choose the output folder with -o)",
          "store": "the grid's store is its `store:` key (true: OUTPUT/store, false: none, or a folder shared with "
                   "other grids)"}


def _check_placed(text: str, where: str) -> None:
    key = _key(text)
    if key in PLACED:
        raise ConfigError(key, f"{text!r} {where}: a grid sets {key} itself: {PLACED[key]}")


def combination_key(chosen: dict[str, str]) -> str:
    return ",".join(f"{a}={lab}" for a, lab in chosen.items())


def read_results(path: Path) -> list[dict]:
    """The rows of a grid's ``results.csv``, each checked (a usage error naming the line and
    column: a hand edit that broke a score is not a traceback in the tables)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for line, r in enumerate(rows, 2):  # line 1: the header
        for key in ("combination", "model"):
            if not r.get(key):
                raise UsageError(f"{path}, line {line}: no {key!r} (results.csv is LiSER's record of the grid's runs; "
                                 "put back the row as LiSER wrote it, or remove the line and run the grid again)")
        for key in ("accuracy", "uar", "macro_f1"):
            try:
                value = float(r.get(key) or "")
                ok = value != value or 0.0 <= value <= 1.0  # nan: a metric the run could not compute
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"{path}, line {line}: {key} {r.get(key)!r} is not a score in [0, 1] (results.csv is "
                                 "LiSER's record of the grid's runs; put back the row as LiSER wrote it, or remove "
                                 "the line and run the grid again)")
    return rows


def write_results(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def rows_of_run(key: str, ctx) -> list[dict]:
    """results.csv rows of one finished run: each model it evaluated."""
    cfg = ctx.config

    def q(kind: str, name: str) -> str:  # rows name components as PLUGIN:NAME (docs/plugins.md)
        return ctx.host.registries[kind].get_recorded(str(name)).qualified

    teachers = "+".join(q("teacher", t.name) for t in cfg.teachers) or "-"
    losses = "+".join(q("loss", loss.name) for loss in cfg.distil.losses) or "-"
    student = q("student", cfg.student.name)
    train_seconds = sum(v for k, v in ctx.stage_seconds.items() if k in ("teach", "label", "distil", "finetune"))
    rows = []
    for e in ctx.evaluations:
        if e.role == "teacher":
            components, model = f"teacher={q('teacher', cfg.teachers[list(ctx.teachers).index(e.model)].name)}", f"teacher:{e.model}"
        elif e.role == "baseline":
            components, model = f"student={student} (labels only)", "baseline"
        elif e.role == "targets":
            components, model = f"teachers={teachers} combined ({q('combiner', cfg.distil.combination)})", "targets"
        else:
            components, model = f"teachers={teachers} student={student} losses={losses}", "student"
        rows.append({
            "combination": key, "model": model, "role": e.role, "components": components,
            **{k: f"{e.metrics[k]:.6f}" for k in ("accuracy", "uar", "macro_f1")},
            "num_parameters": e.num_parameters,
            "train_seconds": f"{ctx.stage_seconds.get('baseline', 0.0):.1f}" if e.role == "baseline" else f"{train_seconds:.1f}",
            "run_dir": str(ctx.run_dir),
            "recipe_fingerprint": ctx.fingerprint,
            "flags": ",".join(ctx.flags),
            "label_fraction": (cfg.data.options or {}).get("label_fraction", ""),
            "labeled_clips": len(ctx.split("labeled")),
            "code": code_string(ctx.code),
            "teacher_identity": teacher_identity(ctx, e.model) if e.role == "teacher" else (
                targets_identity(ctx) if e.role == "targets" else ""),
        })
        rows[-1]["row_check"] = row_check(rows[-1])
    return rows


def targets_identity(ctx) -> str:
    """The combined targets' identity: each teacher's (:func:`teacher_identity`) with its weight,
    and the combiner; "" when a teacher has none."""
    parts = [teacher_identity(ctx, name) for name in ctx.teachers]
    if not parts or not all(parts):
        return ""
    weights = ",".join(f"{float(t.weight):g}" for t in ctx.config.teachers)
    return f"{'+'.join(parts)}|{ctx.config.distil.combination}|{weights}"


def teacher_identity(ctx, name: str) -> str:
    """What a teacher row's scores are a function of, so that two teachers with equal scores
    are never taken for one on the leaderboard: the fingerprint of the teacher that scored the
    test split (its weights, inputs and label space; with a store), else its fit key (a teacher
    fitted in the run), else "" (a pretrained or checkpoint teacher without a store: rows then
    merge by scores, components and size alone)."""
    scored = (ctx.diagnostics.get("store_test") or {}).get(name) or {}
    if scored.get("fingerprint"):
        return f"outputs:{scored['fingerprint'][:16]}"
    fit = (ctx.diagnostics.get("teacher_fits") or {}).get(name) or {}
    return f"fit:{fit['fit_key'][:16]}" if fit.get("fit_key") else ""


def run_dir_of(grid: Grid, key: str) -> Path:
    return grid.output / "runs" / key.replace(",", "__").replace("=", "-").replace("/", "_")


def _key(text: str) -> str:
    from liser_common.typedyaml import parse_override

    return parse_override(text)[0]


def _axis_keys(grid: Grid) -> dict[str, tuple[str, str]]:
    """Each key an axis sets -> (axis, label) of the first label that sets it."""
    out: dict[str, tuple[str, str]] = {}
    for axis, labels in grid.axes.items():
        for label, overrides in labels.items():
            for text in overrides:
                out.setdefault(_key(text), (axis, label))
    return out


def check_cli_overrides(grid: Grid) -> None:
    """Refuse a command-line override of a key that an axis sets, or of a key above one (it
    would make the axis' labels one and the same run); keys *below* one an axis sets are merged
    into each label's value (:func:`after_axes`)."""
    axis_keys = _axis_keys(grid)
    for text in grid.cli_overrides:
        _check_placed(text, "on the command line")
        key = _key(text)
        for a, (axis, label) in axis_keys.items():
            if a == key or a.startswith(key + "."):
                raise ConfigError(key, f"axis {axis!r} of the grid sets {a} (label {label!r}): overriding it would "
                                  f"make the axis' labels one run; override a key below it (e.g. {a}.KEY=VALUE) or "
                                  "edit a copy of the grid")


def _element_rule(grid: Grid, key: str, before: DictConfig) -> tuple[str, str, str] | None:
    """``(list key, element name, rest)`` when ``key`` addresses an element of a list by name
    (``teachers.hf_speech.options.model``) or by position in a list that an axis sets
    (``teachers.0.options.model``: the element at that position before the axes, by name)."""
    from omegaconf import ListConfig, OmegaConf

    parts = key.split(".")
    axis_keys = _axis_keys(grid)
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        node = OmegaConf.select(before, prefix, default=None, throw_on_missing=False)
        if not isinstance(node, ListConfig):
            continue
        seg, rest = parts[i], ".".join(parts[i + 1:])
        if not seg.isdigit():
            return prefix, seg, rest
        if not any(prefix == a or prefix.startswith(a + ".") for a in axis_keys):
            return None  # a list no axis sets: the position means the same in every combination
        if int(seg) >= len(node) or not isinstance(node[int(seg)], DictConfig) or "name" not in node[int(seg)]:
            raise ConfigError(key, f"an axis sets {prefix}, and the recipe before the axes has no named {prefix}.{seg}: "
                              f"address the element by its name ({prefix}.NAME.KEY=VALUE)")
        return prefix, str(node[int(seg)].name), rest
    return None


def after_axes(grid: Grid, combinations: list[tuple[dict[str, str], list[str]]]) -> list[list[str]]:
    """Each combination's full override list: the grid's, the axes', then the command line's.

    A command-line key that goes through an element of a list (``teachers.0.options.model``)
    where an axis sets that list is applied to the element *of the same name* as the one at that
    position before the axes (in the base recipe with the grid's overrides), wherever the axis
    put it; ``teachers.NAME.KEY=VALUE`` names it directly. Combinations without such an element
    are left as they are (logged); an override that reaches no combination is refused.

    The lists are read from each combination's resolved recipe, loaded once per distinct set of
    overrides that touch them (a paper grid: once per teacher set, not once per combination)."""
    from liser_core.engine import load_recipe

    before = None
    rules: dict[str, tuple[str, str, str] | None] = {}
    for text in grid.cli_overrides:
        key = _key(text)
        if "." in key:
            if before is None:
                before = _before_axes(grid)
            rules[text] = _element_rule(grid, key, before)
    reached = {text: 0 for text, rule in rules.items() if rule is not None}
    plain = [t for t in grid.cli_overrides if rules.get(t) is None]
    lists = {rule[0] for rule in rules.values() if rule is not None}

    def touches(text: str) -> bool:  # an override that can change one of those lists
        k = _key(text)
        return any(k == p or k.startswith(p + ".") or p.startswith(k + ".") for p in lists)
    loaded: dict[tuple[str, ...], DictConfig] = {}
    out = []
    for _chosen, overrides in combinations:
        full = [*grid.overrides, *overrides]
        cfg = None
        if reached:
            same = tuple(t for t in [*full, *plain] if touches(t))
            if same not in loaded:
                try:
                    loaded[same] = load_recipe(grid.recipe, [*full, *plain])
                except ConfigError as exc:
                    raise ConfigError(exc.key, f"{exc.reason} (combination {combination_key(_chosen)}{_in_grid(grid)}; "
                                      "nothing was run)", exc.suggestions) from None
            cfg = loaded[same]
        for text in grid.cli_overrides:
            rule = rules.get(text)
            if rule is None:
                full.append(text)
                continue
            prefix, name, rest = rule
            elements = list(_select(cfg, prefix))
            hits = [j for j, e in enumerate(elements) if isinstance(e, DictConfig) and e.get("name") == name]
            if len(hits) > 1:
                raise ConfigError(_key(text), f"{len(hits)} elements of {prefix} are named {name!r} in combination "
                                  f"{combination_key(_chosen)}: give that combination its own grid")
            if hits:
                reached[text] += 1
                full.append(f"{prefix}.{hits[0]}{'.' + rest if rest else ''}={text.partition('=')[2]}")
        out.append(full)
    for text, n in reached.items():
        prefix, name, _ = rules[text]
        if n == 0:
            raise ConfigError(_key(text), f"reaches no combination: no element of {prefix} is named {name!r} after the axes")
        log.info("%s: applied to %s %r in %d of %d combinations", text, prefix, name, n, len(combinations))
    return out


def _in_grid(grid: Grid) -> str:
    return f" of {grid.source}" if grid.source is not None else ""


def _before_axes(grid: Grid) -> DictConfig:
    """The recipe before the axes: the base recipe, the grid's overrides and those command-line
    overrides that load there (``data.options.root=...`` may be required; an element addressed
    by position or name is resolved later, per combination)."""
    from liser_core.engine import load_recipe

    extra = [t for t in grid.cli_overrides if not any(seg.isdigit() for seg in _key(t).split("."))]
    while True:
        try:
            return load_recipe(grid.recipe, [*grid.overrides, *extra])
        except ConfigError as exc:
            culprit = [t for t in extra if exc.key and (exc.key == _key(t) or exc.key.startswith(_key(t) + ".")
                                                        or _key(t).startswith(exc.key + "."))]
            if not culprit:
                raise
            extra.remove(culprit[0])


def _select(cfg: DictConfig, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None) or []


def plan(grid: Grid, host) -> list[dict]:
    """Each combination with its resolved recipe, fingerprint and state: ``done`` (rows with
    this fingerprint and this code), ``stale`` (rows of another recipe), ``other code`` (rows of
    this recipe from other code: another LiSER or plugin version or git commit) or ``todo``."""
    from liser_common.provenance import fingerprint
    from liser_core.engine import prepare_config

    check_cli_overrides(grid)
    rows = read_results(grid.output / "results.csv")
    versions = host.code_versions()
    code = code_identity(code_string(host.code_sources()))
    out, corpora = [], {}  # corpora listed once per data block and seed
    combinations = grid.combinations()
    for (chosen, _), overrides in zip(combinations, after_axes(grid, combinations)):
        key = combination_key(chosen)
        run_dir = run_dir_of(grid, key)
        extra = [f"run_dir={run_dir}"] + ([f"store={grid.store_dir()}"] if grid.store else [])
        try:
            cfg = prepare_config(grid.recipe, [*overrides, *extra], host)
        except ConfigError as exc:  # which combination, of which grid: the key alone names no run
            raise ConfigError(exc.key, f"{exc.reason} (combination {key}{_in_grid(grid)}; nothing was run)",
                              exc.suggestions) from None
        fp = fingerprint(cfg, versions)
        mine = [r for r in rows if r["combination"] == key]
        old = {r.get("recipe_fingerprint") or "" for r in mine}
        state = "todo" if not old else "stale" if old != {fp} else "done"
        why = ""
        if state == "stale":
            changed = _changed_keys(run_dir, cfg, host.registries)
            why = f"the recipe changed at {', '.join(changed[:6])}" if changed else \
                "the recipe changed, or LiSER or a plugin was upgraded"
        elif state == "done" and (why := rows_disagree(run_dir, mine, fp, cfg, host.registries, corpora)):
            state = "stale"  # rows a hand edit changed, or a run dir gone: never reported as they are
        if state == "done" and {code_identity(r.get("code") or "") for r in mine} != {code}:
            state = "other code"
        out.append({"key": key, "config": cfg, "fingerprint": fp, "state": state, "run_dir": run_dir, "why": why})
    return out


def rows_disagree(run_dir: Path, rows: list[dict], fp: str, cfg=None, registries=None, corpora=None) -> str:
    """Why a combination's results.csv rows are not its run's own record ("" when they are):
    the run directory (in this output folder) must hold the finished run of this recipe
    (``metrics.json``: status, fingerprint) on the files the recipe names by path as they are
    now (teacher checkpoints, ``state/run.json``'s ``inputs``), with ``registries`` on the
    corpus as it is now (:func:`liser_core.engine.data_changes`, ``corpora`` its memo), and
    every row its scores and flags there."""
    from liser_common.provenance import changed_inputs, input_digests
    from liser_core.engine import data_changes

    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return f"its run directory {run_dir} has no readable metrics.json (removed or moved?)"
    if m.get("status") != "completed" or m.get("recipe_fingerprint") != fp:
        return f"{run_dir}/metrics.json is not a finished run of this recipe"
    if cfg is not None:
        try:
            state = json.loads((run_dir / "state" / "run.json").read_text())
            recorded = state.get("inputs")
        except (OSError, ValueError, AttributeError):
            state, recorded = None, None
        if changed := changed_inputs(recorded, input_digests(cfg)):
            return f"{', '.join(changed)} changed since it ran (the file there has other contents)"
        if registries is not None and isinstance(state, dict) and (diff := data_changes(run_dir, cfg, registries, state, corpora)):
            return f"the corpus changed since it ran ({len(diff)} clip(s) differ, e.g. {diff[0]})"
    models = {"student": m.get("student"), "baseline": m.get("baseline"), "targets": m.get("targets"),
              **{f"teacher:{k}": v for k, v in (m.get("teachers") or {}).items()}}
    flags = set(m.get("flags") or [])
    for r in rows:
        scored = models.get(r["model"])
        if not isinstance(scored, dict):
            return f"results.csv has a {r['model']} row its run did not evaluate"
        for k in ("accuracy", "uar", "macro_f1"):
            try:
                same = abs(float(r[k]) - float(scored[k])) <= 5e-7 or (r[k] == "nan" and scored[k] != scored[k])
            except (KeyError, TypeError, ValueError):
                same = False
            if not same:
                return f"results.csv's {r['model']} {k} {r.get(k)} is not its run's ({run_dir}/metrics.json): edited?"
        if set(filter(None, (r.get("flags") or "").split(","))) != flags:
            return f"results.csv's {r['model']} flags are not its run's ({run_dir}/metrics.json): edited?"
        if r.get("row_check") and r["row_check"] != row_check(r):  # any other column; rows of older versions have none
            changed = r["row_check"]
            return f"results.csv's {r['model']} row is not as LiSER wrote it (its row_check {changed} does not match): edited?"
    return ""


def _changed_keys(run_dir: Path, cfg, registries=None) -> list[str]:
    """Keys where the recipe a run dir was made with differs from ``cfg`` (empty if unknown).
    With ``registries``, component names compare in canonical form on both sides (a run's
    ``config.yaml`` says ``losses:kl``, or ``kl`` when older; docs/plugins.md, Names)."""
    from liser_common.provenance import RESULT_FREE_KEYS, diff_keys, recipe_view
    from liser_core.config import RecipeConfig

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return []
    try:
        before = typedyaml.safe_load(saved.read_text())
    except yaml.YAMLError:
        return []
    if registries is not None:
        before, cfg = _canonical_names(before, registries), _canonical_names(cfg, registries)
    # as the fingerprint compares them: less result-free keys and what is at its schema default
    return diff_keys(recipe_view(before, RESULT_FREE_KEYS, RecipeConfig), recipe_view(cfg, RESULT_FREE_KEYS, RecipeConfig))


def _canonical_names(cfg, registries):
    """A recipe (mapping or DictConfig) with each component name in canonical form; as it was
    when a name is unknown here or the recipe lacks a component block."""
    from omegaconf import OmegaConf

    from liser_core.config import component_sites

    out = OmegaConf.create(OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else cfg)
    try:
        for key, kind, name in component_sites(out):
            reg = registries[kind]
            new = reg.canonical(reg.get_recorded(name))
            if key.startswith("loggers."):
                out.loggers = {(new if k == name else k): v for k, v in out.loggers.items()}
            else:
                OmegaConf.update(out, key, new)
    except Exception:  # noqa: BLE001 - an explanation only: the fingerprint decides staleness
        return cfg
    return out


def validated_plan(grid: Grid, host, other_code: str | None) -> list[dict]:
    """The grid's plan with rows from other code resolved by ``other_code`` (``rerun``: stale;
    ``keep``: done; no choice: refused), every combination to run validated before any runs
    (:func:`dry_run`). Shared by the sequential runner and the task graph."""
    todo = plan(grid, host)
    other = [it["key"] for it in todo if it["state"] == "other code"]
    if other and other_code not in ("rerun", "keep"):
        raise UsageError(
            f"{len(other)} combination(s) have rows from other code (another LiSER or plugin version or git commit; "
            f"e.g. {other[0]}): rerun them (--rerun-code) or keep their rows, flagged where they are averaged with "
            "others (--keep-code)"
        )
    for it in todo:
        if it["state"] == "other code":
            it["state"] = "stale" if other_code == "rerun" else "done"
            it["why"] = "they come from other code, and --rerun-code asks for this code's" if other_code == "rerun" else ""
    if other and other_code == "rerun" and grid.store:
        log.warning("--rerun-code: fitted teachers and teacher outputs already in the store %s are reused: the store "
                    "keys them by LiSER and plugin versions, weights and inputs, not by git commit (docs/store.md); "
                    "to compute them again with this commit's code, give the grid a new store", grid.store_dir())
    to_run = [it for it in todo if it["state"] != "done"]
    if to_run:
        n, probed = dry_run(grid, host, to_run)
        log.info("%d combination(s) to run validated (%d built and probed)", n, probed)
    return todo


def run_grid(grid: Grid, host, other_code: str | None = None) -> dict:
    """Run the combinations not done with their current recipe and code; returns {"ran",
    "skipped", "replaced": [stale combinations rerun], "results"}.

    Every combination to run is validated first (:func:`dry_run`): an invalid one is refused
    before any runs. Combinations whose rows come from other code need ``other_code``:
    ``"rerun"`` runs them again, ``"keep"`` keeps their rows (a board row that then averages
    runs of different code is flagged ``mixed_code``); without a choice they are refused."""
    todo = validated_plan(grid, host, other_code)
    claim_output(grid)
    grid.output.mkdir(parents=True, exist_ok=True)
    results_path = grid.output / "results.csv"
    rows = read_results(results_path)
    ran = skipped = 0
    spent = 0.0
    replaced = []
    try:
        ran, skipped, spent = _run_items(grid, host, todo, rows, results_path, replaced)
    finally:  # a failed or interrupted grid too: the board shows what is current and says what it lacks
        rows = read_results(results_path) if results_path.is_file() else []
        current = {item["key"] for item in todo}
        gone = sorted({r["combination"] for r in rows if r["combination"] not in current})
        if gone:
            log.info("%d combination(s) in results.csv are no longer in the grid and stay off the leaderboard", len(gone))
        write_leaderboard(grid, *current_rows(todo, rows))
    return {"ran": ran, "skipped": skipped, "replaced": replaced, "results": str(results_path)}


def _run_items(grid: Grid, host, todo: list[dict], rows: list[dict], results_path: Path,
               replaced: list[str]) -> tuple[int, int, float]:
    """:func:`run_grid`'s loop: each combination not done, its rows written after each run."""
    from liser_core.engine import Engine, OtherRecipeError

    ran = skipped = 0
    spent = 0.0
    for i, item in enumerate(todo, 1):
        key = item["key"]
        if item["state"] == "done":
            skipped += 1
            continue
        if item["state"] == "stale":
            log.warning("[%d/%d] %s: its rows are stale (%s); running it again", i, len(todo), key, item["why"])
            replaced.append(key)
        else:
            log.info("[%d/%d] %s", i, len(todo), key)
        t0 = time.perf_counter()
        engine = Engine(item["config"], host, resume="restart" if item["state"] == "stale" else "auto")
        engine.resume_hint = "the same `liser bench` command (it resumes this run and the grid)"  # not liser run
        try:
            ctx = engine.execute()
        except OtherRecipeError as exc:  # the grid's own run folder, unfinished under a recipe the grid no longer has
            log.warning("%s: its run directory holds another recipe's state (%s); starting it afresh", key, exc)
            engine = Engine(item["config"], host, resume="restart")
            ctx = engine.execute()
        if engine.already_complete:  # finished earlier, but its rows never reached results.csv
            log.warning("%s: a finished run whose rows are missing; running it again for its rows", ctx.run_dir)
            ctx = Engine(item["config"], host, resume="restart").execute()
        rows = [r for r in rows if r["combination"] != key] + rows_of_run(key, ctx)
        write_results(results_path, rows)  # after every run: an interrupted grid keeps what it has
        item["state"], item["why"] = "done", ""
        took = time.perf_counter() - t0
        ran += 1
        spent += took
        left = sum(1 for it in todo[i:] if it["state"] != "done")
        log.info("[%d/%d] %s done in %.0fs; %d to go, about %s left", i, len(todo), key, took, left,
                 _clock(spent / ran * left))
    return ran, skipped, spent


def _board_comparisons(grid: Grid, rows: list[dict], more_flags=None) -> list[dict]:
    """The grid's paired comparisons as comparisons.md has them (the report's fraction axis not
    compared: its effect is not in question); --plan's repeats advice reads the same."""
    from liser_tools import compare

    fraction_axis = (grid.report or {}).get("fraction")
    return compare.comparisons(rows, grid.repeat, skip_axes=[fraction_axis] if fraction_axis else [], more_flags=more_flags)


def repeats_advice(grid: Grid, items: list[dict] | None = None) -> list[str]:
    """What ``--plan`` says about repeats: the grid's n per row (a warning below 3) and, from the
    spread of the paired differences in its ``results.csv`` so far, the repeats a difference of
    0.02 and 0.05 UAR needs (:func:`liser_tools.compare.power_lines`). With the grid's ``items``
    (:func:`plan`), only rows of its combinations' current recipes count (not another grid's
    rows in the same folder, nor stale ones)."""
    from liser_tools import compare

    n = 1
    for axis in grid.repeat:
        n *= len(grid.axes.get(axis, {})) or 1
    out = [f"repeats: {n} run(s) per row ({' x '.join(grid.repeat) or 'no repeat axis'})"]
    if n < compare.MIN_REPEATS:
        out[0] += f" -- fewer than {compare.MIN_REPEATS}: intervals and paired tests will have almost no power"
    rows = read_results(grid.output / "results.csv") if (grid.output / "results.csv").is_file() else []
    if items is not None:
        rows = current_rows(items, rows)[0]
    power = compare.power_lines(_board_comparisons(grid, rows)) if rows else []
    out += power or ["repeats needed: no finished runs to estimate the spread from yet (rerun --plan after some)"]
    return out


def flag_notes(flags: set[str]) -> list[str]:
    """Markdown lines explaining each flag a table shows."""
    return [line for f in sorted(flags) for line in ("", f"**!{f}**: {FLAG_NOTES.get(f, 'see the runs warnings')}.")]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fold_flags():
    """``folds_incomplete`` for the rows of one board row or comparison side whose runs do not
    cover each fold of their protocol once per seed (:func:`liser_core.guards.fold_coverage`,
    from each run's ``metrics.json``); what summarize says of the same runs."""
    memo: dict[str, tuple] = {}

    def flags(rows: list) -> set[str]:
        if len(rows) > 1 and fold_coverage(_run_protocol(r.get("run_dir"), memo) for r in rows):
            return {"folds_incomplete"}
        return set()

    return flags


def _run_protocol(run_dir: str | None, memo: dict) -> tuple:
    """(seed, protocol) of a run directory, from its ``config.yaml`` and ``metrics.json``."""
    if run_dir not in memo:
        try:
            seed = (typedyaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("seed")
            protocol = json.loads((Path(run_dir) / "metrics.json").read_text()).get("protocol")
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
            seed, protocol = None, None
        memo[run_dir] = (seed, protocol if isinstance(protocol, dict) else None)
    return memo[run_dir]


def current_rows(plan: list[dict], rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The rows a board may show: those of the grid's combinations made with each one's current
    recipe (its fingerprint in :func:`plan`), and the combinations that have none yet (not run,
    failed, interrupted, or only rows of an earlier recipe: those stay off the board)."""
    fp = {it["key"]: it["fingerprint"] for it in plan if it["state"] != "stale"}  # stale: until rerun, none
    where = {it["key"]: str(it["run_dir"]) for it in plan}  # this output folder's: a copied or moved one links its own runs
    keep = [{**r, "run_dir": where[r["combination"]]} for r in rows
            if r["combination"] in fp and (r.get("recipe_fingerprint") or "") == fp[r["combination"]]]
    have = {r["combination"] for r in keep}
    return keep, [it["key"] for it in plan if it["key"] not in have]


def write_leaderboard(grid: Grid, rows: list[dict], missing: Sequence[str] = ()) -> None:
    """``leaderboard.md`` (and ``comparisons.md``, the plot and the report): each row's mean with
    its 95 % t-interval and n; a teacher or the targets scored the same in several combinations
    once; rows significantly below the best marked (paired, Holm); :mod:`liser_tools.compare`.
    ``missing``: the grid's combinations without rows of their current recipe (the board says
    it is incomplete and names them)."""
    from liser_tools import compare

    folds = _fold_flags()
    table = compare.board_entries(rows, grid.repeat, folds)
    comps = _board_comparisons(grid, rows, folds)
    lines = [
        f"# Leaderboard: {Path(grid.recipe).name}",
        "",
        f"Test-split scores over {', '.join(grid.repeat) or 'one run each'}: mean ± sample std "
        "[95 % t-interval of the mean], n runs; best UAR first. WA = accuracy, UAR = UA = mean per-class "
        "recall. Baselines (labels-only student, each teacher evaluated directly) are rows like any other; "
        "a teacher or the teachers' combined targets that score the same in several combinations (the same "
        "teacher set and fit) is one row, `*` marking the axes it does not depend on. **▼**: UAR "
        "significantly below the reference row, marked ◆: the best row without flags (paired t-test over the "
        "shared repeats, Holm-corrected over the board, p < 0.05); `comparisons.md` has the paired tests of "
        "the grid's axes.",
        *(["", "**Every row is flagged**: no row is a fair yardstick, so ◆ marks the best row, itself flagged, "
           "and ▼ compares flagged rows with each other (see the flags below the table)."]
          if any(e.get("reference") and e["flags"] for e in table) else []),
        "",
        "| # | combination | model | UAR | WA | macro-F1 | params | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, e in enumerate(table, 1):
        cell = {k: compare.board_cell(e, k) for k in ("uar", "accuracy", "macro_f1")}
        model = e["model"] + (f" **!{','.join(e['flags'])}**" if e["flags"] else "")
        mark = " **▼**" if e.get("below_best") else " ◆" if e.get("reference") else ""
        lines.append(f"| {i} | {e['combination']} | {model} | {cell['uar']}{mark} | {cell['accuracy']} | "
                     f"{cell['macro_f1']} | {e['num_parameters']:,} | {e['n']} |")
    lines += ["", f"Generated by `liser bench` from `results.csv` ({len(rows)} rows)."]
    if missing:
        lines += ["", f"**Incomplete: {len(missing)} of the grid's combinations have no rows of their current recipe** "
                  f"(not run yet, failed, interrupted, or rows of an earlier recipe, left off this board): "
                  + ", ".join(f"`{k}`" for k in missing[:8]) + (", ..." if len(missing) > 8 else "")
                  + ". Their axes' rows here have fewer repeats; run the same `liser bench` command to complete it."]
    n_min = min((e["n"] for e in table), default=0)
    if table and n_min < compare.MIN_REPEATS:
        lines += ["", f"**n = {n_min}** for some rows: fewer than {compare.MIN_REPEATS} repeats give no interval "
                  "worth the name, and differences between such rows are not shown to be real or absent; add "
                  "seeds or folds to the grid's repeat axes."]
    lines += [""] + compare.power_lines(comps) if compare.power_lines(comps) else []
    lines += flag_notes({f for e in table for f in e["flags"]})
    codes = sorted({r.get("code") or "not recorded" for r in rows})
    if len(codes) > 1:
        lines += ["", f"Rows come from {len(codes)} code versions: " + "; ".join(f"`{c}`" for c in codes) + "."]
    elif codes:
        lines += ["", f"Code: `{codes[0]}`."]
    atomic_write_text(grid.output / "comparisons.md", compare.comparisons_markdown(comps, Path(grid.recipe).name))
    board = "\n".join(lines) + "\n"
    atomic_write_text(grid.output / "leaderboard.md", board)
    written = {grid.output / "leaderboard.md", grid.output / "comparisons.md"}
    if grid.plot_axis:
        _plot(grid, rows)
        written.add(grid.output / f"uar_by_{grid.plot_axis}.png")
    if grid.report and rows:
        from liser_tools.report import write_report

        made = write_report(grid.output, f"LiSER: {Path(grid.recipe).stem} grid", rows, grid.report, grid.repeat,
                            grid.axes, board, more_flags=_fold_flags())
        written |= {Path(p) for p in made["figures"]} | {Path(made["html"]), grid.output / "efficiency.md"}
        if made["quantized"]:
            written.add(grid.output / "quantized.md")
    # tables and figures of an earlier grid in this folder that this one does not make (another
    # plot axis, no report: block, a student gone): removed, never left with their old numbers
    stale = sorted(p for pattern in DERIVED for p in grid.output.glob(pattern) if p not in written and p.is_file())
    for p in stale:
        p.unlink()
    if stale:
        log.info("removed %s: made for an earlier grid in %s, not by this one", ", ".join(p.name for p in stale),
                 grid.output)


#: What ``liser bench`` derives from results.csv in its output folder (made again on every write).
DERIVED = ("uar_by_*.png", "efficiency.md", "report.html", "pareto.png", "quantized.md", "label_efficiency_*.png")


def _plot(grid: Grid, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = grid.plot_axis
    labels = list(grid.axes[axis])
    lines: dict[tuple[str, str], dict[str, list[float]]] = {}
    flagged: dict[tuple[str, str], dict[str, set[str]]] = {}  # the flags behind each point: on the figure too
    codes: dict[tuple[str, str, str], set[str]] = {}
    for r in rows:
        parts = dict(p.split("=", 1) for p in r["combination"].split(","))
        x = parts.pop(axis)
        rest = ",".join(f"{a}={v}" for a, v in parts.items() if a not in grid.repeat)
        lines.setdefault((rest, r["model"]), {}).setdefault(x, []).append(float(r["uar"]))
        flagged.setdefault((rest, r["model"]), {}).setdefault(x, set()).update(filter(None, (r.get("flags") or "").split(",")))
        codes.setdefault((rest, r["model"], x), set()).add(code_identity(r.get("code") or ""))
    for (rest, model, x), seen in codes.items():  # as on the board: a point averaging runs of different code
        if len(seen) > 1:
            flagged[(rest, model)][x].add("mixed_code")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    marked = False
    for (rest, model), by_x in sorted(lines.items()):
        xs = [lab for lab in labels if lab in by_x]
        ms = [mean_std(by_x[x]) for x in xs]
        flags = sorted(set().union(*(flagged[(rest, model)][x] for x in xs)))
        label = f"{model} {rest}".strip() + (f" !{','.join(flags)}" if flags else "")
        ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3, label=label)
        bad = [(x, m) for x, (m, _) in zip(xs, ms) if flagged[(rest, model)][x]]
        if bad:
            ax.scatter([x for x, _ in bad], [m for _, m in bad], marker="x", s=90, color="red", zorder=4,
                       label=None if marked else "flagged: not comparable (see leaderboard.md)")
            marked = True
    ax.set_xlabel(axis)
    ax.set_ylabel("test UAR")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = grid.output / f".uar_by_{axis}.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(grid.output / f"uar_by_{axis}.png")


def add_parser(sub, plugin_args) -> None:
    p = sub.add_parser(
        "bench",
        help="run a grid of teacher/student/loss/... combinations and write the leaderboard",
        description="Run every combination of a grid (skipping those already done) and write "
        "results.csv, leaderboard.md and a plot.",
        epilog="example: liser bench benchmarks/synth_grid.yaml -o runs/bench",
    )
    p.add_argument("grid", help="grid YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides applied to every combination after the grid's axes (e.g. "
                   "data.options.root=/data/RAVDESS); a key an axis sets is refused; teachers.0.KEY=V, where an axis "
                   "sets the teachers, reaches the teacher of that name wherever the axis puts it")
    p.add_argument("-o", "--output", default=None, help="output folder (default: the grid's `output` or runs/bench-NAME)")
    p.add_argument("--list", action="store_true", help="list the combinations (done, stale, todo) and exit")
    p.add_argument(
        "--dry-run", action="store_true",
        help="validate every combination's recipe, and build and probe every teacher set x student and every data "
        "configuration once (as liser run --dry-run does); run and write nothing",
    )
    code = p.add_mutually_exclusive_group()
    code.add_argument("--rerun-code", dest="other_code", action="store_const", const="rerun",
                      help="run again the combinations whose rows come from other code (another LiSER or plugin "
                      "version or git commit)")
    code.add_argument("--keep-code", dest="other_code", action="store_const", const="keep",
                      help="keep rows from other code; board rows averaging runs of different code are flagged mixed_code")
    p.add_argument(
        "--plan", action="store_true",
        help="print the runs, teacher fits and labeling passes the grid needs (each fit and clip once across "
        "the grid with a store; what the store holds from earlier runs is not subtracted) and an estimated wall "
        "time from per-clip costs measured on this machine; run nothing",
    )
    from liser_tools.taskgraph import add_executor_args

    add_executor_args(p)
    plugin_args(p)


def dry_run(grid: Grid, host, items: list[dict] | None = None) -> tuple[int, int]:
    """Every combination's recipe resolved and validated; every distinct component set
    (teachers, student, training) built and probed once (``Engine.validate``), every other
    distinct data configuration built with its guards (``Engine.prepare_data``). ``items``:
    :func:`plan`'s entries to check (default: all). An invalid combination raises, named.
    Returns (combinations, probes)."""
    from liser_core.engine import Engine

    items = plan(grid, host) if items is None else items
    components, data, probed = set(), set(), 0
    for item in items:
        cfg = plain_config(item["config"])
        comp = json.dumps({k: cfg.get(k) for k in ("teachers", "student", "distil", "finetune", "baseline")}, sort_keys=True)
        dat = json.dumps({"data": cfg.get("data"), "seed": cfg.get("seed")}, sort_keys=True)
        try:
            if comp not in components:  # a new component set: everything built and probed
                Engine(item["config"], host).validate()
                probed += 1
            elif dat not in data:  # known components, new data: the corpus and its guards
                Engine(item["config"], host).prepare_data()
        except ConfigError as exc:
            raise ConfigError(exc.key, f"{exc.reason} (combination {item['key']}; nothing was run)", exc.suggestions) from None
        except LiserError:
            log.error("combination %s is invalid; nothing was run", item["key"])
            raise
        components.add(comp)
        data.add(dat)
    return len(items), probed


def cmd_bench(args, host) -> int:
    grid = load_grid(args.grid, args.output)
    grid.cli_overrides = list(args.overrides)
    check_cli_overrides(grid)
    if getattr(args, "status", False):
        from liser_tools.taskgraph import format_status

        print(format_status(grid.output))
        return 0
    from liser_tools.taskgraph import executor_options

    executor_options(args, grid)  # an option the executor does not take is refused with --list or --plan too
    if args.dry_run:
        n, probed = dry_run(grid, host)
        print(f"{n} combinations validated ({probed} built and probed: every teacher set x student; every "
              "data configuration built with its guards); nothing run or written")
        return 0
    if args.list:
        items = plan(grid, host)
        width = max((len(it["state"]) for it in items), default=4) + 2  # one column, whatever the states
        for item in items:
            print(f"{item['state']:<{width}}{item['key']}" + (f"  ({item['why']})" if item.get("why") else ""))
        return 0
    if args.plan:
        from liser_tools.plan import format_plan, plan_grid

        items = plan(grid, host)
        print(format_plan(grid, plan_grid(grid, host, items)))
        for line in repeats_advice(grid, items):
            print(line)
        return 0
    from liser_tools import taskgraph

    if taskgraph.uses_graph(args, grid):  # --workers N / --executor ray|slurm: a task graph
        return taskgraph.cmd_graph(args, grid, host)
    with taskgraph.GridLock(grid.output):  # one driver per output folder
        # a task-graph driver's status describes that driver's tasks: not this run's (--status)
        (grid.output / taskgraph.STATUS_NAME).unlink(missing_ok=True)
        out = run_grid(grid, host, getattr(args, "other_code", None))
    print(json.dumps(out))
    print(f"leaderboard: {grid.output / 'leaderboard.md'}")
    return 0
