"""The plugin manager: loads plugins from the ``liser`` entry-point group, one at a time.

A plugin that fails to import, whose registration hook raises, or that implements a hook that
does not exist is reported (``liser plugins``) and the others still load; ``strict=True`` turns
any such failure into an error. ``LISER_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the plugins named
with ``only`` (``-p NAME``); ``block`` (``-p no:NAME``) skips the named ones.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from ._registry import Registry, bare_name
from .errors import PluginLoadError, UnknownComponentError, UsageError, close_matches

log = logging.getLogger("liser.plugins")

ENTRY_POINT_GROUP = "liser"
FIRST_PARTY = "liser"  # distribution whose plugins load first
DISABLE_AUTOLOAD_ENV = "LISER_DISABLE_PLUGIN_AUTOLOAD"
KINDS = ("dataset", "teacher", "student", "loss", "logger", "combiner", "augmentation", "optimizer", "scheduler",
         "sampler")
_REGISTRATION_HOOKS = {
    "dataset": "liser_register_datasets",
    "teacher": "liser_register_teachers",
    "student": "liser_register_students",
    "loss": "liser_register_losses",
    "logger": "liser_register_loggers",
    "combiner": "liser_register_combiners",
    "augmentation": "liser_register_augmentations",
    "optimizer": "liser_register_optimizers",
    "scheduler": "liser_register_schedulers",
    "sampler": "liser_register_samplers",
}


@dataclass
class PluginInfo:
    """What ``liser plugins`` shows for one plugin."""

    name: str  # entry-point name
    module: str  # module path the entry point names
    distribution: str = ""  # installed package that declares it
    version: str = ""  # that package's version
    status: str = "loaded"  # loaded | failed | blocked | not loaded | shadowed (its name taken by another package)
    error: str = ""  # why it failed, one line
    traceback: str = ""  # full traceback of the failure
    components: dict[str, list[str]] = field(default_factory=dict)  # kind -> names it registered
    #: declared by the LiSER distribution that runs (not by another package that calls itself liser)
    ours: bool = False


class Registries:
    """The registries of one plugin host, one per kind (:data:`KINDS`)."""

    def __init__(self):
        self.dataset = Registry("dataset")
        self.teacher = Registry("teacher")
        self.student = Registry("student")
        self.loss = Registry("loss")
        self.logger = Registry("logger")
        self.combiner = Registry("combiner")
        self.augmentation = Registry("augmentation")
        self.optimizer = Registry("optimizer")
        self.scheduler = Registry("scheduler")
        self.sampler = Registry("sampler")

    def __getitem__(self, kind: str) -> Registry:
        if kind not in KINDS:
            raise UsageError(
                f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}"
                + (f" (did you mean {close_matches(kind, KINDS)[0]!r}?)" if close_matches(kind, KINDS) else "")
            )
        return getattr(self, kind)

    def __iter__(self):
        return iter(getattr(self, k) for k in KINDS)


class PluginHost:
    """A pluggy ``PluginManager("liser")`` plus the registries its plugins filled."""

    def __init__(self):
        self.pm = pluggy.PluginManager("liser")
        self.pm.add_hookspecs(hookspecs)
        self.registries = Registries()
        self.plugins: list[PluginInfo] = []
        for kind, hook in _REGISTRATION_HOOKS.items():
            getattr(self.pm.hook, hook).call_historic(kwargs={"registry": self.registries[kind]})

    def code_versions(self) -> dict[str, str]:
        """LiSER's version and every loaded plugin package's (:meth:`package_version`), by
        package name: what fingerprints, fit keys and stored outputs are keyed on."""
        from . import __version__

        return {"liser": __version__} | {
            p.distribution: self.package_version(p) for p in self.plugins
            if p.distribution and p.status == "loaded" and not first_party(p)
        }

    def package_version(self, info: PluginInfo) -> str:
        """A plugin package's version as records key on it: its declared version, and where it
        runs from no git checkout (a wheel), a digest of its files: ``1.2+src.1a2b3c4d5e6f``.
        The same version edited or reinstalled with other code is then other code to every
        record that compares versions (finished runs, grid rows, fitted teachers, stored
        outputs, resumes), as an upgrade is; a checkout's commit names its code instead."""
        return self._package_state(info)["version"]

    def _package_state(self, info: PluginInfo) -> dict[str, Any]:
        import importlib.util

        from liser_common.provenance import package_code, source_digest

        states = self.__dict__.setdefault("_states", {})
        if info.distribution not in states:
            try:
                spec = importlib.util.find_spec(info.module.split(":")[0].split(".")[0])
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec is not None and spec.origin and spec.origin != "built-in" else None
            state = package_code(info.version or "?", os.path.dirname(origin) if origin else None)
            digest = source_digest(origin) if origin and state.get("commit") is None else None
            if digest:
                state["version"] = f"{state['version']}+src.{digest[:12]}"
            states[info.distribution] = state
        return dict(states[info.distribution])

    def code_sources(self) -> dict[str, dict[str, Any]]:
        """:meth:`code_versions` with each package's git commit and dirty flag where it runs
        from a checkout (``liser_common.provenance.code_version``): what run records, results
        rows and model cards say the code was."""
        from liser_common.provenance import code_version

        out: dict[str, dict[str, Any]] = {"liser": code_version()}
        for p in self.plugins:
            if not p.distribution or p.status != "loaded" or p.distribution in out or first_party(p):
                continue
            out[p.distribution] = self._package_state(p)
        return out

    # -- loading ------------------------------------------------------------------------------
    def add(self, name: str, plugin: Any, info: PluginInfo | None = None) -> PluginInfo:
        """Register one plugin object/module, isolating its failures."""
        info = info or PluginInfo(name=name, module=getattr(plugin, "__name__", repr(plugin)))
        before = {r.kind: r.qualified_names() for r in self.registries}
        if first_party(info):
            from . import __version__

            package = {"name": FIRST_PARTY, "version": __version__}
        else:
            package = {"name": info.distribution, "version": self.package_version(info)} if info.distribution else {}
        for r in self.registries:
            r._current_plugin = name
            r._current_first_party = first_party(info)
            r._current_package = package
        try:
            self.pm.register(plugin, name=name)
            self._check_hook_names(name, plugin)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - isolation is the point (SystemExit included)
            self._fail(info, exc)
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            for r in self.registries:  # drop what it registered before failing
                r.remove(r.qualified_names() - before[r.kind])
        finally:
            for r in self.registries:
                r._current_plugin = ""
                r._current_first_party = False
                r._current_package = {}
        if info.status == "loaded":
            added = {r.kind: r.qualified_names() - before[r.kind] for r in self.registries}
            info.components = {kind: sorted(bare_name(q) for q in qs) for kind, qs in added.items() if qs}
            for kind, qs in added.items():
                for q in sorted(qs):
                    entry = self.registries[kind].get(q)
                    if entry.override and any(e.first_party for e in self.registries[kind].candidates(entry.name)):
                        log.warning("plugin %r declares it overrides the first-party %s %r: the bare name means "
                                    "%s unless another plugin does too (docs/plugins.md, Names)", name, kind, entry.name, q)
        self.plugins.append(info)
        return info

    def clashes(self) -> list[dict[str, Any]]:
        """Bare names that several loaded plugins register: ``{"kind", "name", "choices"
        (qualified names), "resolves_to" (the override a bare name means, else None)}``."""
        out = []
        for reg in self.registries:
            for bare, entries in reg.clashes().items():
                try:
                    chosen = reg.get(bare).qualified
                except UnknownComponentError:  # ambiguous: a recipe must qualify it
                    chosen = None
                out.append({"kind": reg.kind, "name": bare, "choices": [e.qualified for e in entries],
                            "resolves_to": chosen})
        return out

    def _check_hook_names(self, name: str, plugin: Any) -> None:
        known = {n for n in dir(hookspecs) if n.startswith("liser_")}
        for hook_caller in self.pm.get_hookcallers(plugin) or []:
            if hook_caller.spec is None:
                hook = hook_caller.name
                hint = close_matches(hook, known)
                raise pluggy.PluginValidationError(
                    plugin,
                    f"plugin {name!r} implements unknown hook {hook!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else ""),
                )

    @staticmethod
    def _fail(info: PluginInfo, exc: BaseException) -> None:
        info.status = "failed"
        info.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        info.traceback = "".join(traceback.format_exception(exc))
        log.warning("plugin %r failed to load: %s", info.name, info.error)

    def load_entry_points(
        self,
        *,
        autoload: bool | None = None,
        only: Sequence[str] = (),
        block: Iterable[str] = (),
    ) -> None:
        if autoload is None:
            autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
        block = set(block)
        declared: dict[str, list] = {}
        ours: set[int] = set()  # id() of the entry points of the LiSER that runs
        for ep, is_ours in _declared_entry_points():
            declared.setdefault(ep.name, []).append(ep)
            if is_ours:
                ours.add(id(ep))
        self._ours = ours
        eps, shadowed = {}, []
        for name, candidates in declared.items():
            # LiSER's own keep their names; otherwise the first on sys.path wins, like importlib
            ranked = sorted(candidates, key=lambda ep: 0 if id(ep) in ours else 1)
            eps[name] = ranked[0]
            shadowed += [(name, ep, ranked[0]) for ep in ranked[1:]]
        for flag, names in (("", only), ("no:", block)):
            for missing in [n for n in names if n not in eps]:
                hint = close_matches(missing, eps)
                raise UsageError(
                    f"-p {flag}{missing}: no plugin of that name in entry-point group {ENTRY_POINT_GROUP!r}"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                )

        def order(item):  # LiSER's own plugins first, then by name (a stable order)
            return (0 if id(item[1]) in ours else 1, item[0])

        for name, ep, winner in shadowed:
            info = PluginInfo(name=name, module=ep.value, distribution=_dist_label(ep, id(ep) in ours),
                              version=getattr(getattr(ep, "dist", None), "version", "") or "", status="shadowed")
            info.error = (f"plugin name {name!r} is also declared by {_dist_label(winner, id(winner) in ours) or winner.value}, "
                          "which is loaded under it; this one is not (rename one of the entry points)")
            log.warning("plugin %r of %s not loaded: %s", name, info.distribution or ep.value, info.error)
            self.plugins.append(info)
        for name, ep in sorted(eps.items(), key=order):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=name,
                module=ep.value,
                distribution=_dist_label(ep, id(ep) in ours),
                version=dist.version if dist else "",
                ours=id(ep) in ours,
            )
            if name in block:
                info.status = "blocked"
                self.plugins.append(info)
                continue
            if name in KINDS and not info.ours:  # `liser show loss:kl` would read it as KIND:NAME
                info.status, info.error = "failed", (f"its entry-point name {name!r} is a component kind: "
                                                     f"{name}:NAME would mean kind {name}, not this plugin; rename "
                                                     "the entry point")
                log.warning("plugin %r of %s not loaded: %s", name, info.distribution or ep.value, info.error)
                self.plugins.append(info)
                continue
            if not autoload and name not in only:
                info.status = "not loaded"
                self.plugins.append(info)
                continue
            try:
                module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a plugin that exits on import fails alone
                self._fail(info, exc)
                self.plugins.append(info)
                continue
            self.add(name, module, info)

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def raise_if_failed(self) -> None:
        if self.failed:
            lines = [f"  {p.name} ({p.module}): {p.error}" for p in self.failed]
            raise PluginLoadError("plugins failed to load (--strict-plugins):\n" + "\n".join(lines))

    # -- events -------------------------------------------------------------------------------
    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of an event hook; one that raises is logged, not fatal."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a hook is that plugin's failure
                msg = f"plugin {impl.plugin_name!r} failed in {hook_name} (ignored): {type(exc).__name__}: {exc}"
                log.warning(msg)
                log.debug("traceback", exc_info=True)
                run = kwargs.get("run")  # the run's record says so too (metrics.json warnings), once per plugin and hook
                said = getattr(run, "warnings", None)
                first = f"plugin {impl.plugin_name!r} failed in {hook_name} (ignored)"
                if isinstance(said, list) and not any(w.startswith(first) for w in said):
                    said.append(msg)


#: the package LiSER's own plugins live in (the ``plugins/`` folder, installed as ``liser_plugins``)
FIRST_PARTY_PACKAGE = "liser_plugins"


def first_party(info: PluginInfo) -> bool:
    """A plugin of LiSER's own: its distribution is LiSER's and its module is in LiSER's plugin
    package (a package that only calls its distribution ``liser`` does not make its components
    first-party, which would let their bare names win)."""
    module = str(info.module or "")
    return (info.ours and info.distribution == FIRST_PARTY
            and (module == FIRST_PARTY_PACKAGE or module.startswith(FIRST_PARTY_PACKAGE + ".")))


def _dist_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ""


def _dist_label(ep, ours: bool) -> str:
    """The package that declares an entry point, as records name it: another package that calls
    its distribution ``liser`` is named with where it lies, never as LiSER."""
    name = _dist_name(ep)
    if name == FIRST_PARTY and not ours:
        return f"{name} (not LiSER: {_dist_location(ep.dist)})"
    return name


def _dist_location(dist) -> str:
    try:
        return str(dist.locate_file("")) if dist is not None else "?"
    except Exception:  # noqa: BLE001 - a distribution of an odd finder: where it is stays unknown
        return "?"


def _runs_here(dist) -> bool:
    """Whether a distribution named ``liser`` is the LiSER that runs: its folder holds the
    ``liser_core`` imported here (a wheel in site-packages, the checkout's egg-info), or it is an
    editable install of the folder that does."""
    import json
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    from . import __file__ as core_file

    here = Path(core_file).resolve().parent.parent
    try:
        if Path(str(dist.locate_file(""))).resolve() == here:
            return True
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except Exception:  # noqa: BLE001 - unreadable metadata: not shown to be ours
        return False
    url = direct.get("url") or "" if isinstance(direct, dict) else ""
    return url.startswith("file:") and Path(unquote(urlparse(url).path)).resolve() == here


def _dist_name_of(dist) -> str:
    try:
        return str(dist.metadata["Name"] or "").strip().lower().replace("_", "-")
    except Exception:  # noqa: BLE001 - a broken metadata file
        return ""


def _declared_entry_points() -> list[tuple[Any, bool]]:
    """Every ``liser`` entry point with whether the LiSER that runs declares it. Like
    importlib, one distribution per name (the first on sys.path), except that a package which
    only calls itself ``liser`` neither hides LiSER's own entry points nor counts as LiSER: it
    loads as a third party's, under its location, with a warning. Where no distribution can be
    shown to be the LiSER that runs (imported from a folder no installed metadata covers), the
    first named ``liser`` is taken for it, as importlib would."""
    seen: set[str] = set()
    found: list[tuple[Any, Any, bool]] = []  # (dist, its entry points, ours)
    for dist in importlib.metadata.distributions():
        try:
            # the name as importlib dedupes by it (from the folder's name, without parsing METADATA)
            name = str(getattr(dist, "_normalized_name", None) or dist.metadata["Name"] or "")
            name = name.strip().lower().replace("_", "-")
        except Exception:  # noqa: BLE001 - a broken metadata file: skipped, as importlib skips it
            continue
        ours = name == FIRST_PARTY and _runs_here(dist)
        key = "\0ours" if ours else name
        if not name or key in seen:
            continue
        seen.add(key)  # a later copy of this name is hidden, as importlib hides it, entry points or not
        try:
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception:  # noqa: BLE001 - an unreadable entry_points.txt: nothing declared
            eps = []
        if eps:
            found.append((dist, eps, ours))
    if not any(o for _, _, o in found):
        named = [i for i, (d, _, _) in enumerate(found) if _dist_name_of(d) == FIRST_PARTY]
        if named:
            d, eps, _ = found[named[0]]
            found[named[0]] = (d, eps, True)
    for dist, _, ours in found:
        if not ours and _dist_name_of(dist) == FIRST_PARTY:
            log.warning("a package calls its distribution %r at %s but is not the LiSER that runs; its plugins "
                        "load as a third party's (their names never take LiSER's)", FIRST_PARTY, _dist_location(dist))
    return [(ep, ours) for _, eps, ours in found for ep in eps]


def load_plugins(
    *,
    autoload: bool | None = None,
    only: Sequence[str] = (),
    block: Iterable[str] = (),
    extra: Iterable[tuple[str, Any]] = (),
    strict: bool = False,
) -> PluginHost:
    """Build a :class:`PluginHost` from the installed entry points (and ``extra`` plugins).

    Example::

        >>> host = load_plugins()
        >>> "logmel_cnn" in host.registries.student
        True
    """
    host = PluginHost()
    host.load_entry_points(autoload=autoload, only=only, block=block)
    for name, plugin in extra:
        host.add(name, plugin)
    if strict:
        host.raise_if_failed()
    return host



_DEFAULT: PluginHost | None = None


def default_host() -> PluginHost:
    """A process-wide host with every installed plugin, built on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_plugins()
    return _DEFAULT
