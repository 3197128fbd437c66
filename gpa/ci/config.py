"""The ``[tool.gpa]`` configuration of ``gpa check`` (schema in ``docs/ci.md``).

``[tool.gpa]`` holds defaults for every model (any model key except ``target``: ``kwargs``,
every field of :class:`~gpa.options.AnalysisOptions` under its own name, and the rules),
an optional ``baseline`` file, and ``[tool.gpa.models.<name>]`` tables, one per model::

    [tool.gpa]
    no_unreachable = true

    [tool.gpa.models.resnet]
    target = "gpa.models:resnet"
    kwargs = { blocks = 4 }
    max_shortest = 3
    layers = { "stem.*" = { max_longest = 10 } }

Unknown keys and values of the wrong type raise :class:`gpa.errors.GpaError` naming the
key. Relative file targets and the baseline path are relative to the configuration file.

Example:
    >>> spec = parse_config({"models": {"m": {"target": "a.py", "max_shortest": 3}}})
    >>> spec.models["m"].settings.rules.max_shortest
    3
    >>> parse_config({"tracer": "autograd"}).defaults.options
    {'tracer': <Tracer.AUTOGRAD: 'autograd'>}
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpa.ci.rules import LayerLimit, Rules
from gpa.errors import GpaError
from gpa.options import AnalysisOptions, option_names

__all__ = [
    "mean_limit",
    "parse_rules",
    "Location",
    "Config",
    "ModelSettings",
    "ModelSpec",
    "find_config",
    "load_config",
    "parse_config",
    "read_config",
]

_RULE_KEYS = ("max_shortest", "max_longest", "no_unreachable", "max_mean_shortest", "layers")
_OPTION_KEYS = ("kwargs", *option_names())
_MODEL_KEYS = ("target", *_OPTION_KEYS, *_RULE_KEYS)
_TOP_KEYS = ("models", "baseline", *_OPTION_KEYS, *_RULE_KEYS)
_LAYER_KEYS = ("max_shortest", "max_longest", "allow_unreachable")
_RENAMED = {"eval": "train = false"}  # keys of earlier versions -> what to write now


@dataclass(frozen=True)
class ModelSettings:
    """How one source (``[tool.gpa]``, a model's table, the command line) sets up a model.

    Attributes:
        kwargs: keyword arguments for the target's factory (``-k``).
        options: the :class:`~gpa.options.AnalysisOptions` fields this source sets,
            already checked (unset ones are absent).
        rules: the rules to check.

    A more specific source wins (a model's table over ``[tool.gpa]``, the command line
    over both): see :meth:`overridden_by`; ``kwargs`` merge key by key.
    """

    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    rules: Rules = field(default_factory=Rules)

    def overridden_by(self, other: ModelSettings) -> ModelSettings:
        """These settings with everything ``other`` sets taking precedence."""
        return ModelSettings(
            kwargs={**self.kwargs, **other.kwargs},
            options={**self.options, **other.options},
            rules=self.rules.overridden_by(other.rules),
        )

    def analysis_options(self) -> AnalysisOptions:
        """The options of the analysis (defaults where nothing is set)."""
        return AnalysisOptions(**self.options)


@dataclass(frozen=True)
class Location:
    """A line of a file: where a model or a rule is configured, or where a layer is called."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ModelSpec:
    """One model to check: its display name, TARGET string and settings.

    ``locations`` maps a configuration key (``max_shortest``, ``layers``, ``baseline`` …) to
    the line that sets it for this model, and ``""`` to the model's table, when the model
    comes from a configuration file (so that CI annotations point at the right line).
    ``target`` is loadable from any working directory (a relative file target of a
    configuration made absolute); ``shown``, where that changed it, is the target as the
    configuration writes it: the name reports and the gate's JSON give the model, the same
    on every machine and from every directory.
    """

    name: str
    target: str
    settings: ModelSettings = field(default_factory=ModelSettings)
    locations: Mapping[str, Location] = field(default_factory=dict)
    shown: str | None = None

    def named(self, name: str) -> str:
        """``name``, a model name made from :attr:`target` (a report's, a measurement's),
        with the target as the configuration writes it.

        Example:
            >>> ModelSpec("m", "/repo/nets/m.py:build", shown="nets/m.py:build").named(
            ...     "/repo/nets/m.py:build (resnet18)")
            'nets/m.py:build (resnet18)'
        """
        if self.shown is not None and name.startswith(self.target):
            return self.shown + name[len(self.target) :]
        return name


@dataclass(frozen=True)
class Config:
    """A parsed ``[tool.gpa]`` table.

    Attributes:
        path: the file it came from (``None`` for a dict parsed directly).
        defaults: settings for every model, from ``[tool.gpa]`` itself.
        models: name -> spec (defaults already applied), in file order.
        baseline: the baseline file named by ``baseline``, if any.
    """

    path: Path | None
    defaults: ModelSettings
    models: dict[str, ModelSpec]
    baseline: Path | None = None


def _unknown(key: str, where: str, allowed: tuple[str, ...]) -> GpaError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if key in _RENAMED:
        hint = f" (write {_RENAMED[key]})"
    return GpaError(
        f"unknown key {key!r} in {where}{hint}; allowed keys: {', '.join(sorted(allowed))}"
    )


def _check_keys(table: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise _unknown(key, where, allowed)


def _expect(value: Any, kind: type | tuple[type, ...], what: str, where: str) -> Any:
    if isinstance(value, bool) and kind in (int, (int, float)):  # TOML true is not a number
        raise GpaError(f"{where}: expected {what}, got {value!r}")
    if not isinstance(value, kind):
        raise GpaError(f"{where}: expected {what}, got {value!r}")
    return value


def _limit(value: Any, where: str) -> int:
    _expect(value, int, "a positive integer", where)
    if value < 1:
        raise GpaError(f"{where}: expected a positive integer, got {value!r}")
    return value


def mean_limit(value: Any, where: str) -> float:
    """``value`` as a float, if it can bound a mean of path lengths: a finite number (a
    limit of NaN would hold for any model: nothing compares greater than it) of at least
    1 (a path is one layer long at least: a smaller limit fails every model).

    Raises:
        GpaError: naming ``where``.

    Example:
        >>> mean_limit(2, "max_mean_shortest")
        2.0
    """
    _expect(value, (int, float), "a number", where)
    if not math.isfinite(value) or value < 1:
        raise GpaError(f"{where}: expected a finite number of at least 1, got {value!r}")
    return float(value)


def _layer_limits(value: Any, where: str) -> tuple[LayerLimit, ...]:
    _expect(value, dict, 'a table of patterns, e.g. {"stem.*" = {max_shortest = 4}}', where)
    limits = []
    for pattern, entry in value.items():
        here = f"{where}.{pattern!r}" if "." in pattern or "*" in pattern else f"{where}.{pattern}"
        _expect(entry, dict, "a table with max_shortest, max_longest or allow_unreachable", here)
        _check_keys(entry, here, _LAYER_KEYS)
        if not entry:
            raise GpaError(f"{here}: give max_shortest, max_longest or allow_unreachable")
        allowed = entry.get("allow_unreachable")
        limits.append(
            LayerLimit(
                pattern,
                *(_limit(entry[k], f"{here}.{k}") if k in entry else None for k in _LAYER_KEYS[:2]),
                allow_unreachable=None
                if allowed is None
                else _expect(allowed, bool, "true or false", f"{here}.allow_unreachable"),
            )
        )
    return tuple(limits)


def _option(key: str, value: Any, where: str) -> Any:
    """An analysis option from TOML, checked as :class:`AnalysisOptions` checks it."""
    try:
        return getattr(AnalysisOptions(**{key: value}), key)
    except GpaError as exc:
        raise GpaError(f"{where}: {exc}") from None


def _settings(table: Mapping[str, Any], where: str) -> ModelSettings:
    """The :class:`ModelSettings` of a model table or of ``[tool.gpa]`` (keys already checked)."""

    at = f"{where}.kwargs"
    kwargs = _expect(table.get("kwargs", {}), dict, "a table of keyword arguments", at)
    options = {k: _option(k, table[k], f"{where}.{k}") for k in option_names() if k in table}
    return ModelSettings(kwargs=dict(kwargs), options=options, rules=parse_rules(table, where))


def parse_rules(table: Mapping[str, Any], where: str) -> Rules:
    """The rules ``table`` sets under ``[tool.gpa]``'s keys (others are ignored), each value
    checked as ``gpa check`` checks it on every surface: limits positive integers,
    ``no_unreachable`` a flag, ``max_mean_shortest`` a number, ``layers`` a table of
    patterns with ``max_shortest``, ``max_longest`` or ``allow_unreachable`` each.

    Raises:
        GpaError: a value of the wrong kind, or an unknown key in a pattern's table, named
            as ``where.key``.

    Example:
        >>> parse_rules({"max_shortest": 4, "layers": {"stem*": {"max_longest": 6}}}, "here")
        Rules(max_shortest=4, max_longest=None, no_unreachable=None, max_mean_shortest=None, layers=(LayerLimit(pattern='stem*', max_shortest=None, max_longest=6, allow_unreachable=None),))
    """

    def at(key: str) -> str:
        return f"{where}.{key}"

    return Rules(
        max_shortest=_limit(table["max_shortest"], at("max_shortest"))
        if "max_shortest" in table
        else None,
        max_longest=_limit(table["max_longest"], at("max_longest"))
        if "max_longest" in table
        else None,
        no_unreachable=_expect(table["no_unreachable"], bool, "true or false", at("no_unreachable"))
        if "no_unreachable" in table
        else None,
        max_mean_shortest=mean_limit(table["max_mean_shortest"], at("max_mean_shortest"))
        if "max_mean_shortest" in table
        else None,
        layers=_layer_limits(table["layers"], at("layers")) if "layers" in table else (),
    )


def _resolve_target(target: str, root: Path | None) -> str:
    """A relative file target made relative to the configuration file's directory."""
    head, sep, attr = target.rpartition(":")
    if not (sep and head and all(p.isidentifier() for p in attr.split("."))):
        head, sep, attr = target, "", ""
    is_file = head.endswith(".py") or "/" in head or "\\" in head
    if root is None or not is_file or Path(head).is_absolute():
        return target
    return str(root.absolute() / head) + sep + attr


def parse_config(table: Mapping[str, Any], path: Path | None = None) -> Config:
    """Parse the contents of ``[tool.gpa]`` (from ``path``, for messages and relative paths).

    Raises:
        GpaError: an unknown key (named), a value of the wrong type, a model without target.
    """
    where = "[tool.gpa]" if path is None else f"[tool.gpa] of {path}"
    lines = _key_lines(path) if path is not None else {}
    _expect(table, dict, "a table", where)
    _check_keys(table, where, _TOP_KEYS)
    root = path.parent if path is not None else None
    defaults = _settings(table, "tool.gpa")
    models_table = _expect(table.get("models", {}), dict, "a table of models", "tool.gpa.models")
    models = {}
    for name, entry in models_table.items():
        here = f"tool.gpa.models.{name}"
        _expect(entry, dict, "a table", here)
        _check_keys(entry, f"{here} of {path}" if path else here, _MODEL_KEYS)
        if "target" not in entry:
            raise GpaError(f"{here}: missing 'target' (a .py file or package.module:attr)")
        target = _expect(entry["target"], str, "a TARGET string", f"{here}.target")
        settings = defaults.overridden_by(_settings(entry, here))
        resolved = _resolve_target(target, root)
        models[name] = ModelSpec(
            name,
            resolved,
            settings,
            _model_locations(lines, name),
            shown=target if resolved != target else None,
        )
    baseline = None
    if "baseline" in table:
        value = _expect(table["baseline"], str, "a file path", "tool.gpa.baseline")
        baseline = root / value if root is not None else Path(value)
    return Config(path, defaults, models, baseline)


_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=")


def _parts(dotted: str) -> tuple[str, ...]:
    """``tool.gpa.models."my.net"`` -> ("tool", "gpa", "models", "my.net")."""
    return tuple(
        m.group(1) or m.group(2) or m.group(3)
        for m in re.finditer(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', dotted)
    )


def _key_lines(path: Path) -> dict[tuple[str, ...], Location]:
    """The line of every table header and ``key =`` of a TOML file, by full key path."""
    found: dict[tuple[str, ...], Location] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return found
    shown = _display(path)
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _parts(header.group(1))
            found.setdefault(table, Location(shown, number))
            continue
        key = _KEY.match(line)
        if key:
            found.setdefault((*table, *_parts(key.group(1))), Location(shown, number))
    return found


def _display(path: Path) -> str:
    """``path`` relative to the working directory when below it (as CI annotations want)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _model_locations(lines: Mapping[tuple[str, ...], Location], name: str) -> dict[str, Location]:
    """Configuration key -> the line setting it for model ``name`` (its table, else
    ``[tool.gpa]``); ``""`` -> the model's table."""
    model = ("tool", "gpa", "models", name)
    top = ("tool", "gpa")
    keys = ("", *_RULE_KEYS, "baseline", "target")
    found = {}
    for key in keys:
        at = lines.get((*model, key) if key else model) or (lines.get((*top, key)) if key else None)
        if at is not None:
            found[key] = at
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise GpaError("reading TOML on Python 3.10 needs the tomli package") from None
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise GpaError(f"configuration file {path} not found") from None
    except OSError as exc:
        raise GpaError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GpaError(f"{path} is not valid TOML: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read ``[tool.gpa]`` from the TOML file ``path``.

    Raises:
        GpaError: the file is missing or invalid, has no ``[tool.gpa]``, or the table is invalid.
    """
    path = Path(path)
    data = _read_toml(path)
    table = data.get("tool", {}).get("gpa") if isinstance(data.get("tool"), dict) else None
    if table is None:
        raise GpaError(f"{path} has no [tool.gpa] table")
    return parse_config(table, path)


def find_config(start: str | Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` with a ``[tool.gpa]`` table, from ``start`` upward."""
    here = Path(start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            data = _read_toml(candidate)
            if isinstance(data.get("tool"), dict) and "gpa" in data["tool"]:
                return candidate
    return None


def model_spec(
    arg: str, config: Config | None, overrides: ModelSettings | None = None
) -> ModelSpec:
    """The model a command-line argument names, with its settings: a model of ``config``
    by name (its table), any other TARGET with ``config``'s ``[tool.gpa]`` defaults; the
    command line's ``overrides`` over both (``docs/ci.md``: every analysing command).

    Example:
        >>> config = parse_config({"tracer": "fx", "models": {"m": {"target": "a.py"}}})
        >>> model_spec("m", config).target, model_spec("b.py", config).settings.options
        ('a.py', {'tracer': <Tracer.FX: 'fx'>})
    """
    overrides = overrides or ModelSettings()
    spec = config.models.get(arg) if config is not None else None
    if spec is None:
        defaults = config.defaults if config is not None else ModelSettings()
        return ModelSpec(arg, arg, defaults.overridden_by(overrides))
    return replace(spec, settings=spec.settings.overridden_by(overrides))


def read_config(path: str | Path | None = None) -> Config | None:
    """``[tool.gpa]`` of ``path``, else of the nearest ``pyproject.toml`` that has one, else None."""
    found = Path(path) if path is not None else find_config()
    return load_config(found) if found else None
