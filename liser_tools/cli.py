"""The ``liser`` command line: ``run``, ``list``, ``plugins``, ``data check``.

Usage errors (bad recipe key, unknown component, missing file) print one line and exit with
status 2; no traceback unless ``--traceback`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from liser_core.errors import (
    LiserError,
    PluginLoadError,
    UnknownComponentError,
    UsageError,
    close_matches,
    plural,
)


def _plugin_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plugins")
    g.add_argument(
        "-p",
        dest="plugins",
        action="append",
        default=[],
        metavar="NAME",
        help="load plugin NAME even with LISER_DISABLE_PLUGIN_AUTOLOAD=1; -p no:NAME blocks it",
    )
    g.add_argument(
        "--strict-plugins", action="store_true", help="fail if any plugin fails to load"
    )
    p.add_argument(
        "--debug", "--traceback", dest="traceback", action="store_true",
        help="show full tracebacks on errors (including the plugin code an error came from)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liser",
        description="LiSER: distil audio-visual emotion teachers into lightweight speech students.",
    )
    parser.add_argument("--version", action="version", version=f"liser {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run a recipe: teach, label, distil, finetune, evaluate",
        description="Run a recipe end to end and write a run directory.",
        epilog="example: liser run recipes/synth_kd.yaml distil.epochs=5 run_dir=runs/try1",
    )
    p.add_argument("recipe", help="recipe YAML file (with --resume: or the run directory to continue)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (YAML values; a key given twice: the last counts)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final table")
    p.add_argument(
        "--dry-run", action="store_true",
        help="validate the recipe, build every component and run each once on a tiny batch of the corpus; "
        "print the resolved recipe; train and write nothing",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in the run directory exactly where it stopped (an error if "
        "there is none); without this flag an unfinished run with the same recipe is continued anyway",
    )
    g.add_argument("--restart", action="store_true", help="discard the run directory's saved state first (LiSER's own files only)")
    g.add_argument(
        "--overwrite", action="store_true",
        help="move a run already in the run directory aside (to RUN_DIR.replaced-TIME) and start afresh; nothing is deleted",
    )
    d = p.add_argument_group("several processes (torchrun)")
    d.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="run on N processes of this machine through torchrun (one per GPU; gloo on CPU); "
        "for several machines call torchrun yourself (docs/distributed.md)",
    )
    d.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="with --nproc: restart all processes up to K times after a failure; each restart "
        "continues from the last checkpoint",
    )
    _plugin_args(p)

    p = sub.add_parser(
        "list",
        help="list registered components",
        description="List registered components of one kind (or all), filtered by a wildcard.",
        epilog="example: liser list teachers 'face*'",
    )
    p.add_argument(
        "kind",
        nargs="?",
        default=None,
        help="teachers | students | losses | datasets | loggers | combiners | augmentations | optimizers | "
        "schedulers | samplers (default: all)",
    )
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'face*'")
    p.add_argument("-v", "--verbose", action="store_true", help="each component's options, types, defaults and docs")
    _plugin_args(p)

    p = sub.add_parser(
        "show",
        help="a component's options (types, defaults) and documentation",
        description="Show one registered component: its plugin, options with types and defaults, and its docstring.",
        epilog="example: liser show dkd",
    )
    p.add_argument("name", help="component name, or KIND:NAME where two kinds share a name (e.g. loss:kl)")
    _plugin_args(p)

    p = sub.add_parser(
        "plugins",
        help="show loaded plugins, their packages and versions, and failures",
        description="Show every plugin in the 'liser' entry-point group and its status.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of failed plugins")
    _plugin_args(p)

    p = sub.add_parser(
        "data",
        help="check a recipe's data before training (liser data check RECIPE)",
        description="Data tools. 'check': open every clip of a recipe's corpus once and report.",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = data_sub.add_parser(
        "check",
        help="open every clip once; report counts and unreadable/silent/too long/mislabeled files",
        description=(
            "Build the recipe's corpus as 'liser run' would, open every clip of every split once, "
            "report counts per split, class and speaker, and list every unusable file with its "
            "reason. Trains nothing. Exit status: 0 clean, 1 problems found, 2 usage error."
        ),
        epilog="example: liser data check recipes/cremad_kd.yaml data.options.root=/data/CREMA-D --json",
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (YAML values; a key given twice: the last counts)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-j", "--workers", type=int, default=4, metavar="N", help="clips opened in parallel (default 4)")
    _plugin_args(p)
    from ._cli_deploy import add_parsers
    from ._cli_summary import add_parser as add_summary
    from .bench import add_parser as add_bench

    add_parsers(sub, _plugin_args)
    add_summary(sub, _plugin_args)
    add_bench(sub, _plugin_args)
    return parser


def _version() -> str:
    from liser_core import __version__

    return __version__


def _host(args, strict: bool | None = None):
    from liser_core._plugins import load_plugins

    only = [p for p in args.plugins if not p.startswith("no:")]
    block = [p[3:] for p in args.plugins if p.startswith("no:")]
    return load_plugins(only=only, block=block, strict=args.strict_plugins if strict is None else strict)


_KINDS = ("teacher", "student", "loss", "dataset", "logger", "combiner", "augmentation", "optimizer", "scheduler",
          "sampler")
_KIND_ALIASES = {plural(k): k for k in _KINDS}


def cmd_list(args) -> int:
    host = _host(args)
    kinds = list(_KINDS)
    if args.kind is not None:
        kinds = [_KIND_ALIASES.get(args.kind, args.kind)]
    found = False
    for kind in kinds:
        reg = host.registries[kind]
        names = reg.list(args.pattern)
        print(f"{plural(kind)} ({len(names)}):")
        for name in names:
            e = reg.get(name)
            if args.verbose:
                from liser_tools.show import describe

                print("  " + describe(host, kind, name).replace("\n", "\n  ") + "\n")
                continue
            tags = " ".join(f"[{k}={v}]" for k, v in e.tags.items())
            print(f"  {name:<22} {e.summary}  {tags}  ({e.plugin})".rstrip() + _clash_note(reg, e))
        found = found or bool(names)
    if not found and args.pattern != "*":
        print(f"nothing matches {args.pattern!r}", file=sys.stderr)
        return 1
    return 0


def _clash_note(reg, entry) -> str:
    """`liser list`'s mark on a component whose bare name another plugin registers too."""
    others = [e.qualified for e in reg.candidates(entry.name) if e is not entry]
    if not others:
        return ""
    try:
        chosen = reg.get(entry.name)
    except UnknownComponentError:
        return f"  [clash: also {', '.join(others)}; a recipe names one as PLUGIN:NAME]"
    if chosen is entry:
        return f"  [overrides {', '.join(others)}: the bare name {entry.name!r} means this one]"
    return f"  [overridden by {chosen.qualified}: name this one as {entry.qualified}]"


def cmd_show(args) -> int:
    from liser_tools.show import describe, find

    host = _host(args)
    head, _, rest = args.name.partition(":")
    kind, name = (_KIND_ALIASES.get(head, head), rest) if rest and _KIND_ALIASES.get(head, head) in _KINDS else ("", args.name)
    if kind:  # KIND:NAME (NAME may be PLUGIN:NAME)
        kinds = [kind] if name in host.registries[kind] else []
    else:  # NAME or PLUGIN:NAME
        kinds = find(host, name, _KINDS)
    if not kinds:
        every = sorted({n for k in _KINDS for n in host.registries[k].list()})
        hint = close_matches(name, every)
        raise UsageError(f"no component named {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                         + " (liser list shows them all)")
    for k in kinds:  # a bare name several plugins register: say first what a recipe's bare name means
        found = host.registries[k].candidates(name)
        if ":" not in name and len(found) > 1:
            try:
                means = f"the bare name {name!r} means {host.registries[k].get(name).qualified} (override)"
            except UnknownComponentError:
                means = f"the bare name {name!r} is refused in a recipe: name one of them"
            print(f"{k} {name}: registered by {len(found)} plugins ({', '.join(e.qualified for e in found)}); {means}\n")
    print("\n\n".join(describe(host, k, host.registries[k].display_name(e)) for k in kinds for e in host.registries[k].candidates(name)))
    return 0


def cmd_plugins(args) -> int:
    host = _host(args, strict=False)  # show the table first, then fail if --strict-plugins
    rows = [(p.name, p.distribution or "-", p.version or "-", p.status, p.module) for p in host.plugins]
    widths = [max(len(r[i]) for r in rows + [("plugin", "package", "version", "status", "module")]) for i in range(5)]
    header = ("plugin", "package", "version", "status", "module")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r, p in zip(rows, host.plugins):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if p.components:
            print("    provides: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in p.components.items()))
            overrides = [f"{k} {e.name}" for k in p.components for e in host.registries[k]
                         if e.plugin == p.name and e.override and len(host.registries[k].candidates(e.name)) > 1]
            if overrides:
                print("    overrides first-party: " + ", ".join(overrides))
        if p.error:
            print(f"    error: {p.error}")
            if args.verbose:
                print("    " + p.traceback.replace("\n", "\n    "))
    clashes = host.clashes()
    if clashes:  # names several plugins register: nothing is disabled, a recipe must choose
        print("\nname clashes (both load; a recipe names one as PLUGIN:NAME):")
        for c in clashes:
            how = (f"the bare name means {c['resolves_to']} (override)" if c["resolves_to"]
                   else "the bare name is refused")
            print(f"  {c['kind']} {c['name']}: {', '.join(c['choices'])}; {how}")
    if host.failed and args.strict_plugins:
        print(f"liser: error: {len(host.failed)} plugin(s) failed to load (--strict-plugins)", file=sys.stderr)
        return PluginLoadError.exit_code  # 2, as `liser run`/`liser list --strict-plugins` refuse
    return 0


def _table(run) -> str:
    lines = [
        f"{'model':<16} {'role':<9} {'params':>10} {'WA (acc)':>9} {'UAR':>7} {'macro-F1':>9}",
    ]
    for e in run.evaluations:
        m = e.metrics
        lines.append(
            f"{e.model:<16} {e.role:<9} {e.num_parameters:>10,} {m['accuracy']:>9.3f} {m['uar']:>7.3f} {m['macro_f1']:>9.3f}"
        )
    split = run.evaluations[0].split if run.evaluations else "test"
    n = len(run.evaluations[0].clip_ids) if run.evaluations else 0
    # a constant guess of one class it has: a split without every class has a higher chance level
    present = len({c.label for c in run.split(split)} & set(run.label_space.classes)) or len(run.label_space)
    classes = (f"{len(run.label_space)} classes" if present == len(run.label_space)
               else f"{present} of the {len(run.label_space)} classes")
    lines.append(f"({split} split: {n} clips, {classes}, chance UAR {1 / present:.3f})")
    if run.flags:
        lines.append(f"!!! flagged: {', '.join(run.flags)} -- see the warnings in metrics.json; these scores are NOT a fair estimate")
    if run.warnings:
        lines.append(f"{len(run.warnings)} warning(s) in metrics.json, e.g.: {run.warnings[0]}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from liser_common.distributed import shutdown
    from liser_core._plugins import load_plugins  # noqa: F401 - imported for its side effect on logging
    from liser_core.engine import Engine, config_yaml, prepare_config

    if args.nproc < 1 or args.max_restarts < 0:
        raise UsageError("--nproc must be >= 1 and --max-restarts >= 0")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(args)
    _setup_logging(logging.WARNING if args.quiet else logging.INFO)
    if int(os.environ.get("RANK", "0")) > 0:  # one console, rank 0's; the others only warn
        _setup_logging(logging.WARNING)
    host = _host(args)
    recipe, overrides = args.recipe, list(args.overrides)
    if args.resume and not os.path.exists(recipe) and not recipe.endswith((".yaml", ".yml")):
        raise UsageError(f"--resume: {recipe} does not exist; nothing to resume (give a run directory)")
    if os.path.isdir(recipe):  # liser run --resume RUN_DIR: the recipe the run was started with
        if not args.resume:
            raise UsageError(f"{recipe} is a directory: give a recipe file, or --resume to continue the run in it")
        saved = os.path.join(recipe, "state", "recipe.yaml")
        if not os.path.isfile(saved):
            raise UsageError(f"--resume: {recipe} has no saved run state ({saved} is missing); nothing to resume")
        recipe, overrides = saved, [f"run_dir={recipe}", *overrides]
    cfg = prepare_config(recipe, overrides, host)
    mode = "resume" if args.resume else "restart" if args.restart else "overwrite" if args.overwrite else "auto"
    engine = Engine(cfg, host, resume=mode)
    if args.resume and os.path.isdir(args.recipe):  # what a difference from the run's state may come from
        engine.resume_overrides = [o.split("=", 1)[0].strip() for o in args.overrides]
    if args.dry_run:
        from liser_core.engine import ConsoleGate

        gate = ConsoleGate()
        try:
            run = engine.validate()
        except BaseException:
            gate.drop()  # a refused recipe: only its error line
            raise
        gate.pass_on()
        shutdown()
        if not run.dist.is_main:
            return 0
        print(config_yaml(cfg), end="")
        print(
            f"dry run: corpus {run.corpus.name} ({', '.join(f'{s} {len(run.split(s))}' for s in ('teacher', 'labeled', 'unlabeled', 'test'))}), "
            f"{len(run.teachers)} teacher(s), student {cfg.student.name}, {len(run.losses)} loss term(s): every component "
            "built and run once on real clips; nothing trained or written",
            file=sys.stderr,
        )
        for w in run.warnings:
            print(f"warning: {w}", file=sys.stderr)
        return 0
    run = engine.execute()
    shutdown()  # every rank, in order: see distributed.shutdown
    if not run.dist.is_main:
        return 0
    if engine.already_complete:  # said so in one line (the log); nothing was run
        return 0
    print()
    print(_table(run))
    print(f"run directory: {run.run_dir}")
    return 0


def _torchrun(args) -> int:
    """Relaunch this very command on ``--nproc`` local processes with torchrun's launcher."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv, skip = [], False
    for a in args.argv:  # the command line minus the launcher's own options
        if skip:
            skip = False
            continue
        if a in ("--nproc", "--max-restarts"):
            skip = True
            continue
        if a.startswith(("--nproc=", "--max-restarts=")):
            continue
        argv.append(a)
    launcher = get_args_parser().parse_args(
        [
            "--standalone",
            f"--nproc-per-node={args.nproc}",
            f"--max-restarts={args.max_restarts}",
            "--tee=3",  # each rank's output on this console, prefixed with its rank
            "-m",
            "liser_tools.cli",
            *argv,
        ]
    )
    try:
        run(launcher)
    except ChildFailedError as exc:
        first = exc.get_first_failure()[1]
        message = first.message
        if isinstance(message, dict):  # torchelastic's error file: {"message": ..., "extraInfo": {traceback}}
            message = message.get("message") or ""
        message = str(message or "").strip().splitlines()
        print(
            f"liser: error: rank {first.local_rank} (of {args.nproc}) failed with exit code {first.exitcode}"
            + (f": {message[0]}" if message else "")
            + f"; the run can continue from its last checkpoint: liser run --resume RUN_DIR --nproc {args.nproc}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_data_check(args) -> int:
    if getattr(args, "data_command", None) != "check":
        raise UsageError("'liser data' needs a subcommand: check (see liser data check --help)")
    import json

    from .datacheck import check_recipe, format_report

    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    from liser_common.progress import progress

    bar = None

    def tick(done: int, total: int) -> None:  # the report's progress, through the one progress helper
        nonlocal bar
        if bar is None:
            bar = progress(range(total), total=total, desc="data check", unit="clip")
        next(bar, None)
        if done == total:
            next(bar, None)  # ends the bar

    report = check_recipe(args.recipe, args.overrides, host=_host(args), workers=args.workers, progress=tick)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_predict(args) -> int:
    from ._cli_deploy import cmd_predict as predict

    return predict(args, _host(args))


def cmd_push(args) -> int:
    from ._cli_deploy import cmd_push as push

    return push(args, _host(args))


def cmd_serve(args) -> int:
    from ._cli_deploy import cmd_serve as serve

    return serve(args, _host(args))


def cmd_export(args) -> int:
    from ._cli_deploy import cmd_export as export

    return export(args, _host(args))


def cmd_bench(args) -> int:
    from .bench import cmd_bench as bench

    _setup_logging(logging.INFO)
    return bench(args, _host(args))


def cmd_summarize(args) -> int:
    from ._cli_summary import cmd_summarize as summarize

    return summarize(args)


def _setup_logging(level: int) -> None:
    root = logging.getLogger("liser")
    if not any(getattr(h, "_liser_console", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        h._liser_console = True
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for h in root.handlers:
        if getattr(h, "_liser_console", False):
            h.setLevel(level)
    from liser_common.progress import bars_wanted, configure

    configure(bars=bars_wanted(level))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if getattr(args, "overrides", None) is not None:  # overrides may follow options: liser run R --dry-run a=1
        args.overrides += [x for x in extra if "=" in x and not x.startswith("-")]
        extra = [x for x in extra if not ("=" in x and not x.startswith("-"))]
    if extra:
        parser.error("unrecognized arguments: " + " ".join(extra))
    if args.command is None:
        parser.print_help()
        return 2
    _setup_logging(logging.WARNING)
    try:
        return {
            "run": cmd_run,
            "list": cmd_list,
            "show": cmd_show,
            "plugins": cmd_plugins,
            "data": cmd_data_check,
            "predict": cmd_predict,
            "export": cmd_export,
            "push": cmd_push,
            "serve": cmd_serve,
            "summarize": cmd_summarize,
            "bench": cmd_bench,
        }[args.command](args)
    except UsageError as exc:
        if getattr(args, "traceback", False):
            raise
        print(f"liser: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except LiserError as exc:
        if getattr(args, "traceback", False):
            raise
        hint = " (--debug shows where)" if exc.__cause__ is not None else ""
        print(f"liser: error: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (handled alike while a run goes)
        import signal

        term = getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM
        print("liser: terminated (SIGTERM)" if term else "liser: interrupted", file=sys.stderr)
        return 143 if term else 130


def _worker_main() -> int:
    """``main`` in a torchrun worker: an error that escapes is recorded for torchrun's report."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(main)()


if __name__ == "__main__":  # python -m liser_tools.cli (also what torchrun runs)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(_worker_main() if "TORCHELASTIC_RUN_ID" in os.environ else main())
