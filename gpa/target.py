"""Loading a model to analyse from a TARGET string, as the CLI receives it.

A TARGET is either

* a path to a Python file, optionally followed by ``:attr``
  (``nets/mine.py`` or ``nets/mine.py:build``),
* an import spec ``package.module:attr`` (``torchvision.models:resnet50``), or
* a model of a library, built from its configuration without weights (see
  :data:`LIBRARIES`): ``torchvision:NAME`` and ``timm:NAME`` (the libraries' model
  names), an Ultralytics model YAML (``yolov8n.yaml``, ``ultralytics:yolo11n``, a path
  ``nets/custom.yaml``), ``transformers:TYPE`` (a model type: ``bert``, ``gpt2``,
  ``llama`` … built by ``AutoModel.from_config``) or ``transformers:CLASS``
  (``GPT2LMHeadModel``). ``-k`` options go to the library's constructor (for
  ``transformers``: to the configuration, e.g. ``num_hidden_layers=2``).

``attr`` (a dotted attribute path is allowed) may name an ``nn.Module``
instance, an ``nn.Module`` subclass or any callable returning an ``nn.Module``.
Without ``:attr`` the model is the first defined of :data:`DEFAULT_NAMES`.

Example inputs come from the same file or module: ``example_inputs`` (a
tensor, a tuple of tensors, or a zero-argument callable returning one) or
``input_shape`` (a tuple of ints, or a list of such tuples); failing both, a
model attribute ``input_shape`` is used. For ``gpa measure``, the file may also define
``example_batches`` (an iterable of batches, or a zero-argument callable returning one),
``forward_inputs(batch)`` (what of a batch forward takes, as ``batch[0]`` of
``(inputs, targets)``; default: the whole batch) and ``loss_fn(outputs, batch)`` (the
loss; default: gpa's virtual loss). A library model comes with inputs that fit
it (:func:`library_inputs_text` describes them).

Every problem a user can cause raises :class:`gpa.errors.TargetError` with
one message that names the problem and what to do about it. Nothing here
depends on click: the CLI only parses options and calls these functions.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
import traceback
import urllib.error
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import torch
from torch import nn

from gpa.errors import TargetError
from gpa.frontends.inputs import declared_inputs, inputs_given, shapes_given
from gpa.frontends.modules import display_name
from gpa.names import TARGET_MODULE_PREFIX
from gpa.options import option_names

__all__ = [
    "DEFAULT_NAMES",
    "LIBRARIES",
    "LoadedTarget",
    "library_inputs_text",
    "load_target",
]

#: Names looked up, in this order, when a target gives no ``:attr``.
DEFAULT_NAMES: tuple[str, ...] = ("model", "build_model", "get_model", "create_model")

_THIS_FILE = Path(__file__).resolve()
_GPA_DIR = _THIS_FILE.parent
_MAX_LISTED = 20


@dataclass
class LoadedTarget:
    """A model loaded from a TARGET, with the inputs its file or module defines.

    Attributes:
        model: the ``nn.Module`` to analyse.
        example_inputs: positional inputs of ``forward`` (a tuple of tensors; a
            library model's may hold ``None`` for an optional argument before a
            later one; a dict the target gives by name is bound to forward's positions,
            its gaps at their defaults), or ``None`` when the target defines none.
        input_shape: one shape per positional input, or ``None``. At most one
            of ``example_inputs`` and ``input_shape`` is set; ``example_inputs``
            takes precedence when a file defines both.
        name: display name, e.g. ``"nets/mine.py:build"``,
            ``"torchvision.models:resnet50"`` or ``"timm:resnet50"`` (a library
            target is named as given).
        example_batches: the file's ``example_batches`` (batches for ``gpa measure``:
            an iterable, or a zero-argument callable returning one), or ``None``.
        loss_fn: the file's ``loss_fn(outputs, batch)`` for ``gpa measure``, or ``None``.
        forward_inputs: the file's ``forward_inputs(batch)`` for ``gpa measure`` (what of a
            batch forward takes), or ``None``.
        inputs_from: where a library target's inputs come from, in words (``"timm's
            input_size for the model; 2 images, ..."``), or ``None`` (the user's own).
        notes: what gpa chose in building a library target, for the report (a
            transformers model built without its cache).
    """

    model: nn.Module
    example_inputs: tuple[torch.Tensor | None, ...] | None
    input_shape: list[tuple[int, ...]] | None
    name: str
    example_batches: Any = None
    loss_fn: Callable[..., Any] | None = None
    forward_inputs: Callable[[Any], Any] | None = None
    inputs_from: str | None = None
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Tracebacks restricted to the user's own code
# --------------------------------------------------------------------------


def _excluded_roots() -> list[Path]:
    roots = {_GPA_DIR}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError, OSError):
            roots.add(Path(sysconfig.get_paths()[key]).resolve())
    for module in (importlib, torch):
        file = getattr(module, "__file__", None)
        if file:
            roots.add(Path(file).resolve().parent)
    return sorted(roots)


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _display_path(filename: str | os.PathLike[str]) -> str:
    """A path relative to the working directory when it lies below it."""
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _user_frames(tb: TracebackType | None, roots: Iterable[Path]) -> list[traceback.FrameSummary]:
    """The frames of ``tb`` in the user's code.

    A frame is kept when its file lies under one of ``roots`` (the target's
    directory or package), or otherwise outside gpa, the standard library,
    installed packages and importlib's frozen modules.
    """
    wanted = [Path(r).resolve() for r in roots]
    excluded = _excluded_roots()
    kept: list[traceback.FrameSummary] = []
    for frame in traceback.extract_tb(tb):
        if frame.filename.startswith("<"):
            continue
        path = Path(frame.filename).resolve()
        if path == _THIS_FILE:  # the loader itself, even when the target sits above gpa/
            continue
        if any(_is_under(path, r) for r in wanted) or not any(_is_under(path, r) for r in excluded):
            kept.append(frame)
    return kept


def _download_hint(
    factory: Callable[..., Any], kwargs: Mapping[str, Any], exc: BaseException
) -> str:
    """What to do when ``factory`` failed fetching weights from the network (a default of
    its weights arguments: torchvision's detection models fetch their backbone's): gpa
    reads the architecture, which needs none. Empty for any other failure.

    Example:
        >>> import urllib.error
        >>> def ssd(weights=None, weights_backbone="DEFAULT"): ...
        >>> _download_hint(ssd, {}, urllib.error.URLError("no network")).split("none: ")[1]
        'give -k weights_backbone=None'
    """
    chain, seen = [], exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    offline = any(
        isinstance(e, (urllib.error.URLError, ConnectionError)) or type(e).__name__ in _OFFLINE
        for e in chain
    )
    if not offline:
        return ""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    named = [
        n
        for n in _WEIGHT_ARGUMENTS
        if n in params and n not in kwargs and params[n].default not in (None, False)
    ]
    options = " ".join(f"-k {n}={'False' if 'pretrained' in n else 'None'}" for n in named)
    where = f"give {options}" if named else "build it without them"
    library = getattr(factory, "__module__", "") or ""
    also = (
        " (or name it torchvision:NAME, which builds without weights)"
        if library.startswith("torchvision")
        else ""
    )
    return f"\nIt fetched weights from the network; gpa needs none: {where}{also}"


#: Arguments of library factories that fetch pretrained weights.
_WEIGHT_ARGUMENTS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")
#: Exceptions of model hubs that mean no network.
_OFFLINE = frozenset({"LocalEntryNotFoundError", "OfflineModeIsEnabled", "HTTPError"})


def _describe_exception(exc: BaseException, roots: Iterable[Path]) -> str:
    """The user's traceback lines followed by the exception, Python-style."""
    lines: list[str] = []
    frames = _user_frames(exc.__traceback__, roots)
    if frames:
        lines.append("Traceback (user code):")
        for frame in frames:
            lines.append(
                f'  File "{_display_path(frame.filename)}", line {frame.lineno}, in {frame.name}'
            )
            if frame.line:
                lines.append(f"    {frame.line.strip()}")
    if isinstance(exc, SyntaxError) and exc.filename:
        lines.append(f'  File "{_display_path(exc.filename)}", line {exc.lineno}')
        if exc.text:
            lines.append(f"    {exc.text.strip()}")
        lines.append(f"{type(exc).__name__}: {exc.msg}")
    else:
        lines.extend(line.rstrip("\n") for line in traceback.format_exception_only(type(exc), exc))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Importing
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    """Put ``directory`` first on ``sys.path`` for the duration of the block."""
    entry = str(directory)
    already = entry in sys.path
    if not already:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if not already:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


@contextlib.contextmanager
def _importing_from(directory: Path, keep: str) -> Iterator[None]:
    """Let the target file import the modules next to it, then forget them.

    ``directory`` goes first on ``sys.path`` for the duration of the block.
    If it was not on ``sys.path`` already, the sibling modules imported
    through it (``blocks.py``, a ``blocks/`` package) are removed from
    ``sys.modules`` on exit, except ``keep``: otherwise ``blocks`` would shadow
    another target's own ``blocks`` or an installed package of that name.
    Packages that were imported before (gpa itself, for instance) are never
    touched.
    """
    before = set(sys.modules)
    inserted = str(directory) not in sys.path
    with _on_sys_path(directory):
        try:
            yield
        finally:
            if inserted:
                added = set(sys.modules) - before
                tops = {n.partition(".")[0] for n in added} - before - {keep}
                siblings = {top for top in tops if _is_sibling(top, directory)}
                for name in added:
                    if name.partition(".")[0] in siblings:
                        del sys.modules[name]


def _is_sibling(top: str, directory: Path) -> bool:
    """Whether top-level module ``top`` is a file or package directly in ``directory``."""
    module = sys.modules.get(top)
    locations = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or ())]
    return any(
        loc is not None and _is_under(Path(loc).resolve(), directory.resolve()) for loc in locations
    ) and ((directory / f"{top}.py").exists() or (directory / top).is_dir())


def _module_name_for(path: Path) -> str:
    """A private, unique ``sys.modules`` name for the target file ``path``."""
    stem = re.sub(r"\W", "_", path.stem) or "target"
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"{TARGET_MODULE_PREFIX}{stem}_{digest}"


def _exec_file(path: Path, display: str) -> ModuleType:
    """Execute the file at ``path`` as a fresh module."""
    name = _module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"cannot load {display}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickle and inspect look modules up by name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise TargetError(
            f"importing {display} failed; fix the error in the file:\n"
            + _describe_exception(exc, [path.parent])
        ) from None
    return module


def _import_module(module_name: str, spec_text: str) -> tuple[ModuleType, list[Path]]:
    """Import ``module_name`` for an import spec, with the working directory on the path."""
    cwd = Path.cwd()
    try:
        with _on_sys_path(cwd):
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            hint = module_name.replace(".", "/") + ".py"
            raise TargetError(
                f"cannot import module {module_name!r} (from target {spec_text!r}): "
                f"no module named {missing!r}. Install the package that provides it, run gpa "
                f"from the directory that contains it, or give a file path such as {hint}"
            ) from None
        raise TargetError(
            f"importing module {module_name!r} (from target {spec_text!r}) failed:\n"
            + _describe_exception(exc, _package_roots(module_name))
        ) from None
    except (Exception, SystemExit) as exc:
        raise TargetError(
            f"importing module {module_name!r} (from target {spec_text!r}) failed:\n"
            + _describe_exception(exc, _package_roots(module_name))
        ) from None
    return module, _package_roots(module_name)


def _package_roots(module_name: str) -> list[Path]:
    """Directories holding the code of ``module_name``'s top-level package."""
    top = sys.modules.get(module_name.partition(".")[0])
    roots: list[Path] = []
    if top is not None:
        for location in getattr(top, "__path__", None) or ():
            roots.append(Path(location))
        file = getattr(top, "__file__", None)
        if file and not roots:
            roots.append(Path(file).parent)
    return roots


# --------------------------------------------------------------------------
# Finding and building the model
# --------------------------------------------------------------------------


_KINDS = ("nn.Module instances", "nn.Module subclasses", "functions")

#: Names a target file defines for gpa, never taken for the model.
_INPUT_NAMES = ("example_inputs", "input_shape", "example_batches", "loss_fn", "forward_inputs")


def _kind_of(name: str, value: Any, module: ModuleType) -> str | None:
    """Which of :data:`_KINDS` ``value`` is, when it could be the model the user meant."""
    if name.startswith("_") or name in _INPUT_NAMES:
        return None
    if isinstance(value, nn.Module):
        return _KINDS[0]
    origin = getattr(value, "__module__", None) or ""
    defined_here = origin == module.__name__ or (
        hasattr(module, "__path__") and origin.startswith(module.__name__ + ".")
    )
    if not defined_here:
        return None
    if inspect.isclass(value) and issubclass(value, nn.Module):
        return _KINDS[1]
    if inspect.isfunction(value):
        return _KINDS[2]
    return None


def _candidates(module: ModuleType) -> dict[str, list[str]]:
    """Public names of ``module`` that could be a model, by kind, in definition order."""
    names = getattr(module, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = list(vars(module))
    found: dict[str, list[str]] = {kind: [] for kind in _KINDS}
    for name in names:
        if not isinstance(name, str):
            continue
        kind = _kind_of(name, getattr(module, name, None), module)
        if kind:
            found[kind].append(name)
    return found


def _candidate_text(module: ModuleType) -> str:
    found = _candidates(module)
    if not any(found.values()):
        return "it defines no nn.Module, nn.Module subclass or function"
    parts = []
    for kind, names in found.items():
        if names:
            shown = ", ".join(names[:_MAX_LISTED])
            more = f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
            parts.append(f"{kind}: {shown}{more}")
    return "it defines " + "; ".join(parts)


def _get_attr(module: ModuleType, attr: str, where: str) -> Any:
    value: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            value = getattr(value, part)
        except AttributeError:
            missing = ".".join(attr.split(".")[: i + 1])
            known = [n for names in _candidates(module).values() for n in names]
            close = difflib.get_close_matches(part, known, n=1) if i == 0 else []
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise TargetError(
                f"{where} has no attribute {missing!r}{guess}; {_candidate_text(module)}. "
                f"Name the model or its factory as {where}:NAME"
            ) from None
        except Exception as exc:  # a module-level __getattr__ that fails
            raise TargetError(
                f"looking up {attr!r} in {where} failed:\n{_describe_exception(exc, [])}"
            ) from None
    return value


def _find_default(module: ModuleType, where: str) -> tuple[str, Any]:
    for name in DEFAULT_NAMES:
        if name in vars(module):
            return name, vars(module)[name]
    looked = ", ".join(DEFAULT_NAMES)
    raise TargetError(
        f"no model found in {where}: looked for {looked}; {_candidate_text(module)}. "
        f"Define one of those names, or name the model or its factory as {where}:NAME"
    )


def _check_kwargs(
    factory: Callable[..., Any],
    kwargs: dict[str, Any],
    label: str,
    taken: tuple[str, str] | None = None,
) -> None:
    """Check the ``-k`` options against the factory's signature before calling it.

    Unknown keywords and required parameters left without a value get a
    message naming them, instead of a bare ``TypeError`` from the call. ``taken``: the
    parameter gpa passes itself, and what it is (an Ultralytics model's ``cfg``: its YAML).
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and C extensions: let the call decide
        return
    params = signature.parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if taken is not None:
        named = [n for n in named if n != taken[0]]
        if taken[0] in kwargs:
            raise TargetError(
                f"{label} takes {taken[0]!r} from {taken[1]}: it cannot be given with -k "
                f"(it accepts: {', '.join(named)})"
            )
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            accepted = ", ".join(named) if named else "no keyword arguments"
            options = [k for k in unknown if k in _OPTION_NAMES]
            hint = (
                f"; {', '.join(map(repr, options))}: an analysis option, not the factory's "
                "(its flag on the command line; options=gpa.AnalysisOptions(...) in Python)"
                if options
                else ""
            )
            raise TargetError(
                f"{label} does not accept {', '.join(repr(k) for k in unknown)} "
                f"(given with -k or kwargs); it accepts: {accepted}{hint}"
            )
    required = [
        p.name
        for p in params
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in kwargs
    ]
    if required:
        options = " ".join(f"-k {name}=VALUE" for name in required)
        raise TargetError(f"{label} requires {', '.join(required)}: give {options}")


def _build(
    value: Any, attr: str, kwargs: dict[str, Any], where: str, roots: list[Path]
) -> nn.Module:
    label = f"{attr} in {where}"
    if isinstance(value, nn.Module):
        if kwargs:
            given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise TargetError(
                f"{label} is an nn.Module instance, so the -k options ({given}) cannot be "
                "passed to it; name a factory function or class instead, or drop -k"
            )
        return value
    if not callable(value):
        raise TargetError(
            f"{label} is a value of type {type(value).__name__}, not an nn.Module or a "
            "function returning one; name the model or its factory"
        )
    _check_kwargs(value, kwargs, label)
    try:
        built = value(**kwargs)
    except (Exception, SystemExit) as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise TargetError(
            f"building the model failed: {attr}({args}) from {where} raised an exception:\n"
            + _describe_exception(exc, roots)
            + _download_hint(value, kwargs, exc)
        ) from None
    if not isinstance(built, nn.Module):
        raise TargetError(
            f"{label} returned {type(built).__module__}.{type(built).__qualname__}, "
            "not a torch.nn.Module; the factory must return the model"
        )
    return built


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def _find_inputs(
    module: ModuleType, model: nn.Module, where: str, roots: list[Path]
) -> tuple[tuple[torch.Tensor, ...] | None, list[tuple[int, ...]] | None]:
    namespace = vars(module)
    if "example_inputs" in namespace:
        value = namespace["example_inputs"]
        label = f"example_inputs in {where}"
        if callable(value) and not isinstance(value, torch.Tensor):
            try:
                value = value()
            except (Exception, SystemExit) as exc:
                raise TargetError(
                    f"calling example_inputs() from {where} failed:\n"
                    + _describe_exception(exc, roots)
                ) from None
        return inputs_given(value, label, model), None
    if "input_shape" in namespace:
        return None, shapes_given(namespace["input_shape"], f"input_shape in {where}")
    found = declared_inputs(model, where)
    return found.example_inputs, found.shapes


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def _split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"path_or_module:attr"``; a colon not followed by a dotted name is part of the path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and all(part.isidentifier() for part in tail.split(".")):
        return head, tail
    return spec, None


def _is_file_spec(head: str) -> bool:
    return (
        head.endswith(".py")
        or "/" in head
        or os.sep in head
        or (os.altsep is not None and os.altsep in head)
        or os.path.exists(head)
        or not all(part.isidentifier() for part in head.split("."))
    )


def load_target(
    spec: str,
    kwargs: dict[str, Any] | None = None,
    *,
    device: str | None = None,
    train: bool = True,
) -> LoadedTarget:
    """Load the model named by a TARGET string, and the inputs its source defines.

    Args:
        spec: ``path/to/file.py``, ``path/to/file.py:attr``, ``package.module:attr``, a
            library model: ``torchvision:NAME``, ``timm:NAME``, ``transformers:NAME``, an
            Ultralytics model YAML (``yolov8n.yaml``, ``ultralytics:NAME``, a path), or a
            zoo entry's name (``resnet``, where no module of that name imports).
        kwargs: keyword arguments for the factory (``-k key=value`` options); for a
            ``transformers`` target, settings of the model's configuration.
        device: where a library model is built (``"meta"``: no weights are allocated).
            Default: the CPU, except ``transformers`` models, which are built on the meta
            device (their default configurations reach billions of parameters; gpa needs
            only shapes). Files and import specs build their models themselves.
        train: the mode the model is to be analysed in: torchvision and timm models
            get two images where batch norm runs in train mode (it needs more than one
            value per channel), else one.

    Returns:
        The model, its example inputs or input shapes (if any), and a display name.

    Raises:
        TargetError: the file is missing or fails to import, no model is found,
            the factory raises or returns something that is not an ``nn.Module``,
            the module of an import spec cannot be imported, or a library target names
            a library that is not installed or a model it does not have.
    """
    kwargs = dict(kwargs or {})
    spec = spec.strip()
    if not spec:
        raise TargetError("empty target: give a .py file or a package.module:attr import spec")
    library = _library_spec(spec)
    if library is not None:
        loaded = _load_library_model(spec, *library, kwargs, device, train)
        if loaded is not None:
            return loaded
    head, attr = _split_spec(spec)

    if _is_file_spec(head):
        path = Path(head).expanduser()
        if not path.exists():
            raise TargetError(
                f"file not found: {head} (looked in {path.resolve().parent}); "
                "check the path, or use package.module:attr to import an installed module"
            )
        if path.is_dir():
            raise TargetError(f"{head} is a directory; give the .py file that defines the model")
        path = path.resolve()
        directory = path.parent
        roots = [directory]
        module_name = _module_name_for(path)
        with _importing_from(directory, keep=module_name):
            module = _exec_file(path, head)
            return _finish(module, head, attr, kwargs, roots)

    try:
        module, roots = _import_module(head, spec)
    except TargetError as exc:
        # a bare zoo name (``resnet``, as ``gpa scale`` and ``gpa zoo`` name entries), where
        # there is no module by that name (one failing to import says why)
        if attr is None and head.isidentifier() and not _module_found(head):
            if head in _zoo_names():
                return load_target(f"gpa.models:{head}", kwargs, device=device, train=train)
            close = difflib.get_close_matches(head, _zoo_names(), n=3)
            if close:
                named = ", ".join(repr(c) for c in close)
                raise TargetError(
                    f"{exc}; or a zoo entry (gpa zoo): did you mean {named}?"
                ) from None
        raise
    return _finish(module, head, attr, kwargs, roots)


def _module_found(name: str) -> bool:
    """Whether a top-level module ``name`` can be found (imported or not), the working
    directory on the path."""
    with _on_sys_path(Path.cwd()):
        return name in sys.modules or importlib.util.find_spec(name) is not None


#: The names of the analysis options (``gpa.AnalysisOptions``' fields).
_OPTION_NAMES = frozenset(option_names(settable=False))


def _zoo_names() -> list[str]:
    """The entries of gpa's zoo (:mod:`gpa.models`)."""
    import gpa.models

    return gpa.models.names()


def _finish(
    module: ModuleType, where: str, attr: str | None, kwargs: dict[str, Any], roots: list[Path]
) -> LoadedTarget:
    """Find the model in the imported ``module``, build it and collect its inputs."""
    if attr is None:
        attr, value = _find_default(module, where)
    else:
        value = _get_attr(module, attr, where)
    model = _build(value, attr, kwargs, where, roots)
    example_inputs, input_shape = _find_inputs(module, model, where, roots)
    loss_fn, forward_inputs = vars(module).get("loss_fn"), vars(module).get("forward_inputs")
    if loss_fn is not None and not callable(loss_fn):
        raise TargetError(f"loss_fn in {where} must be a function (outputs, batch) -> loss")
    if forward_inputs is not None and not callable(forward_inputs):
        raise TargetError(f"forward_inputs in {where} must be a function batch -> forward's inputs")
    label = f"{where}:{attr}"
    built = display_name(model)
    if kwargs and built not in (type(model).__name__, attr.rpartition(".")[2]):
        label += f" ({built})"  # the settings chose the architecture: timm's model_name
    return LoadedTarget(
        model=model,
        example_inputs=example_inputs,
        input_shape=input_shape,
        name=label,
        example_batches=vars(module).get("example_batches"),
        loss_fn=loss_fn,
        forward_inputs=forward_inputs,
    )


# --------------------------------------------------------------------------
# Library targets: torchvision:NAME, timm:NAME, transformers:NAME, Ultralytics YAML
# --------------------------------------------------------------------------

#: The libraries whose models a TARGET names directly as ``LIBRARY:NAME``; an Ultralytics
#: model YAML may also be given alone (``yolov8n.yaml``, ``nets/custom.yaml``).
LIBRARIES: tuple[str, ...] = ("torchvision", "timm", "ultralytics", "transformers")

_YAML_SUFFIXES = (".yaml", ".yml")

#: Images per batch of the default inputs of torchvision and timm models with batch norm
#: analysed in train mode: after a global pooling (squeeze-excite, attention heads) it
#: refuses one image; other models get one.
_IMAGE_BATCH = 2
_TWO = "(two: batch norm in train mode needs more than one value per channel)"


def _images(model: nn.Module, train: bool, kind: str = "image") -> tuple[int, str]:
    """How many images (``kind``: ``"clip"`` for video) the default inputs of a
    torchvision or timm model hold, and that count in words (``"2 images"``)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
    if train and any(isinstance(m, norms) for m in model.modules()):
        return _IMAGE_BATCH, f"{_IMAGE_BATCH} {kind}s"
    return 1, f"1 {kind}"


#: Tokens per sequence of the default inputs of transformers models (token ids 0).
_TOKENS = 16


def library_inputs_text() -> str:
    """How library targets get their inputs (for help texts and the README)."""
    return (
        "torchvision and timm models: 1 image (2 where batch norm runs in train mode) of "
        "the size the library gives for the model (torchvision's weights' crop size, timm's input_size; "
        "video models 16 frames); Ultralytics models: 1 image of 640x640 (224x224 for "
        f"classification); transformers models: {_TOKENS} token ids (0), or one image (two "
        "where batch norm runs in train mode) or audio clip of the size the configuration "
        "gives, plus decoder token ids for encoder-decoder models"
    )


def _library_spec(spec: str) -> tuple[str, str] | None:
    """``(library, name)`` when ``spec`` names a library model, else None."""
    library, sep, name = spec.partition(":")
    if sep and library in LIBRARIES:
        return library, name.strip()
    head, attr = _split_spec(spec)
    if attr is None and spec.lower().endswith(_YAML_SUFFIXES):
        return "ultralytics", spec
    return None


def _import_library(library: str, spec: str) -> ModuleType:
    """Import ``library`` for ``spec``, or say that it is not installed."""
    if library == "ultralytics" and "ultralytics" not in sys.modules:
        # Its import probes the network (a DNS lookup) unless told it is offline; gpa
        # never needs the network.
        os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        return importlib.import_module(library)
    except ModuleNotFoundError as exc:
        if exc.name == library:
            raise TargetError(
                f"target {spec!r} names a model of {library}, which is not installed in "
                f"this Python ({sys.executable}): install it (pip install {library}) or "
                "give a .py file that builds the model"
            ) from None
        raise TargetError(
            f"importing {library} (for target {spec!r}) failed:\n" + _describe_exception(exc, [])
        ) from None
    except (Exception, SystemExit) as exc:
        raise TargetError(
            f"importing {library} (for target {spec!r}) failed:\n" + _describe_exception(exc, [])
        ) from None


def _construct(spec: str, make: Callable[[], nn.Module], device: str | None) -> nn.Module:
    """``make()`` on ``device``, its failures as a TargetError naming ``spec``."""
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = make()
    except TargetError:
        raise
    except (Exception, SystemExit) as exc:
        where = f" on the {device} device" if device is not None else ""
        raise TargetError(
            f"building {spec}{where} failed:\n" + _describe_exception(exc, [])
        ) from None
    if not isinstance(model, nn.Module):  # pragma: no cover - the libraries return modules
        raise TargetError(f"{spec} built a {type(model).__name__}, not an nn.Module")
    return model


def _no_weights(spec: str, kwargs: dict[str, Any]) -> None:
    given = [k for k in ("weights", "pretrained", "weights_backbone") if k in kwargs]
    if given:
        raise TargetError(
            f"{spec} is built without weights (gradient paths do not depend on them, and "
            f"gpa downloads nothing); drop -k {', '.join(given)}"
        )


def _unknown_model(
    spec: str, library: str, name: str, module: ModuleType, known: Iterable[str]
) -> None:
    """Return (None: an ordinary import spec) when ``name`` is an attribute path of the
    library's module, else raise with the closest model names."""
    if name and all(part.isidentifier() for part in name.split(".")):
        value: Any = module
        try:
            for part in name.split("."):
                value = getattr(value, part)
        except AttributeError:
            pass
        else:
            return None
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    guess = (
        f" (did you mean {' or '.join(repr(f'{library}:{c}') for c in close)}?)" if close else ""
    )
    raise TargetError(
        f"{library} {getattr(module, '__version__', '')} has no model named {name!r}{guess}; "
        f"{_LIBRARY_HINTS[library]}"
    )


_LIBRARY_HINTS = {
    "torchvision": "torchvision.models.list_models() lists the names",
    "timm": "timm.list_models() lists the names (e.g. timm.list_models('resnet*'))",
    "transformers": (
        "give a model type (bert, gpt2, llama, t5, vit, whisper …: the keys of "
        "transformers.CONFIG_MAPPING) or a model class (BertModel, GPT2LMHeadModel …)"
    ),
}


def _load_library_model(
    spec: str, library: str, name: str, kwargs: dict[str, Any], device: str | None, train: bool
) -> LoadedTarget | None:
    """The library model ``spec`` names, or None when ``name`` is an attribute of the
    library's module instead (``torchvision:models.resnet50``: an ordinary import spec)."""
    if not name:
        raise TargetError(f"target {spec!r} names no model: give {library}:NAME")
    loaders = {
        "torchvision": functools.partial(_torchvision_model, train=train),
        "timm": functools.partial(_timm_model, train=train),
        "ultralytics": _ultralytics_model,
        "transformers": functools.partial(_transformers_model, train=train),
    }
    return loaders[library](spec, name, kwargs, device)


def _torchvision_model(
    spec: str, name: str, kwargs: dict[str, Any], device: str | None, *, train: bool
) -> LoadedTarget | None:
    torchvision = _import_library("torchvision", spec)
    models = torchvision.models
    known = models.list_models()
    if name not in known:
        return _unknown_model(spec, "torchvision", name, torchvision, known)
    _no_weights(spec, kwargs)
    options = {"weights": None, **kwargs}
    with contextlib.suppress(TypeError, ValueError):
        if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
            options["weights_backbone"] = None  # detection and segmentation models
    model = _construct(spec, lambda: models.get_model(name, **options), device)
    video = name in models.list_models(module=models.video)
    batch, images = _images(model, train, "clip" if video else "image")
    shape = _torchvision_shape(models, name, batch)
    origin = f"{images}{' of 16 frames' if video else ''} of its torchvision weights' crop size"
    origin += f" {_TWO}" if batch > 1 else ""
    return LoadedTarget(model, None, shape, spec, inputs_from=origin if shape else None)


def _torchvision_shape(models: ModuleType, name: str, batch: int) -> list[tuple[int, ...]] | None:
    """Inputs that fit torchvision model ``name``: ``batch`` images (clips for video models) of
    the crop size of its weights' transforms; None for detection and optical flow models,
    which take lists of images."""
    if name in models.list_models(module=models.detection) + models.list_models(
        module=models.optical_flow
    ):
        return None
    size = 224
    with contextlib.suppress(Exception):  # metadata only: no download
        transforms = models.get_model_weights(name).DEFAULT.transforms()
        size = int((getattr(transforms, "crop_size", None) or transforms.resize_size)[0])
    if name in models.list_models(module=models.video):
        return [(batch, 3, 16, size, size)]
    return [(batch, 3, size, size)]


def _timm_model(
    spec: str, name: str, kwargs: dict[str, Any], device: str | None, *, train: bool
) -> LoadedTarget | None:
    timm = _import_library("timm", spec)
    if not timm.is_model(name):
        return _unknown_model(spec, "timm", name, timm, timm.list_models())
    _no_weights(spec, kwargs)
    model = _construct(spec, lambda: timm.create_model(name, pretrained=False, **kwargs), device)
    config = getattr(model, "pretrained_cfg", None) or {}
    channels, *size = config.get("input_size") or (3, 224, 224)
    channels = kwargs.get("in_chans", channels)
    batch, images = _images(model, train)
    origin = f"{images} of its timm input_size"
    given = kwargs.get("img_size")  # (the configuration keeps the pretrained size)
    if isinstance(given, int) or (
        isinstance(given, (tuple, list)) and all(isinstance(n, int) for n in given)
    ):
        size = [given, given] if isinstance(given, int) else list(given)
        origin = f"{images} of the img_size given"
    origin += f" {_TWO}" if batch > 1 else ""
    return LoadedTarget(model, None, [(batch, channels, *size)], spec, inputs_from=origin)


def _ultralytics_model(
    spec: str, name: str, kwargs: dict[str, Any], device: str | None
) -> LoadedTarget:
    ultralytics = _import_library("ultralytics", spec)
    from ultralytics.nn import tasks

    if not name.lower().endswith(_YAML_SUFFIXES):
        name += ".yaml"
    path = Path(name).expanduser()
    if path.is_dir():
        raise TargetError(f"{name} is a directory; give an Ultralytics model YAML file")
    if path.exists():
        name = str(path.resolve())
    elif "/" in name or os.sep in name:
        raise TargetError(
            f"file not found: {name} (looked in {path.resolve().parent}); give the path of "
            "an Ultralytics model YAML, or the name of one the package ships (yolov8n.yaml)"
        )
    with _quiet_ultralytics():
        try:
            config = tasks.yaml_model_load(name)
        except FileNotFoundError:
            shipped = _shipped_yamls(ultralytics)
            close = difflib.get_close_matches(Path(name).stem, shipped, n=3, cutoff=0.6)
            guess = f" (close: {', '.join(f'{c}.yaml' for c in close)})" if close else ""
            raise TargetError(
                f"no Ultralytics model YAML {name!r}: no such file here, and ultralytics "
                f"{ultralytics.__version__} ships none of that name{guess}. A scale letter "
                "after the version picks the size (yolov8n.yaml is yolov8.yaml at scale n)"
            ) from None
        except Exception as exc:
            raise TargetError(
                f"reading the Ultralytics model YAML {name!r} failed:\n"
                + _describe_exception(exc, [])
            ) from None
        model_class = _ultralytics_class(tasks, config)
        taken = (next(iter(inspect.signature(model_class).parameters), "cfg"), "the YAML")
        _check_kwargs(model_class, kwargs, f"{model_class.__name__} (for {spec})", taken)
        kwargs.setdefault("verbose", False)
        model = _construct(spec, lambda: model_class(config, **kwargs), device)
    channels = kwargs.get("ch", config.get("ch", 3))
    size = 224 if isinstance(model, tasks.ClassificationModel) else 640
    origin = f"1 image of Ultralytics' default size for the task, {size}x{size}"
    return LoadedTarget(model, None, [(1, channels, size, size)], spec, inputs_from=origin)


def _ultralytics_class(tasks: ModuleType, config: dict[str, Any]) -> type[nn.Module]:
    """The ``ultralytics.nn.tasks`` model class for a model YAML (as its ``YOLO`` and
    ``RTDETR`` classes choose it)."""
    head = str(config.get("head", [[None, None, ""]])[-1][2])
    if head == "RTDETRDecoder":
        return tasks.RTDETRDetectionModel
    if head.startswith("World"):
        return tasks.WorldModel
    if head.startswith("YOLOE"):
        return tasks.YOLOESegModel if "Segment" in head else tasks.YOLOEModel
    by_task = {
        "detect": "DetectionModel",
        "segment": "SegmentationModel",
        "semantic": "SemanticSegmentationModel",
        "classify": "ClassificationModel",
        "pose": "PoseModel",
        "obb": "OBBModel",
        "depth": "DepthModel",
    }
    task = tasks.guess_model_task(config)
    return getattr(tasks, by_task.get(task, "DetectionModel"), tasks.DetectionModel)


def _shipped_yamls(ultralytics: ModuleType) -> list[str]:
    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    return sorted({p.stem for p in root.rglob("*.yaml")})


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """Ultralytics' logger says only errors while gpa builds a model (no summaries)."""
    import logging

    logger = logging.getLogger("ultralytics")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _transformers_model(
    spec: str, name: str, kwargs: dict[str, Any], device: str | None, train: bool = True
) -> LoadedTarget | None:
    transformers = _import_library("transformers", spec)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if name in CONFIG_MAPPING:
        config_class = CONFIG_MAPPING[name]

        def make(config: Any) -> nn.Module:
            return transformers.AutoModel.from_config(config)

    else:
        model_class = getattr(transformers, name, None) if name.isidentifier() else None
        if not (
            isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)
        ):
            from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

            classes = [c for c in MODEL_MAPPING_NAMES.values() if isinstance(c, str)]
            known = [*CONFIG_MAPPING.keys(), *classes]
            return _unknown_model(spec, "transformers", name, transformers, known)
        config_class = model_class.config_class

        def make(config: Any) -> nn.Module:
            return model_class(config)

    config = _transformers_config(spec, config_class, kwargs)
    device = "meta" if device is None else device
    model = _construct(spec, lambda: make(config), device)
    inputs, origin = _transformers_inputs(model, config, device, train)
    notes = ()
    if "use_cache" not in kwargs and hasattr(config, "use_cache"):
        notes = (_NO_CACHE,)
    return LoadedTarget(model, inputs, None, spec, inputs_from=origin, notes=notes)


#: The note of a transformers target built without its cache (§1.5).
_NO_CACHE = (
    "built with use_cache=False, as training runs it: the key/value cache, an output "
    "otherwise, would give every attention's key and value projections a path of 1 "
    "(-k use_cache=True keeps it)"
)


def _transformers_config(spec: str, config_class: type, kwargs: dict[str, Any]) -> Any:
    """The configuration from the library's defaults and ``kwargs`` (``-k``), which must
    be settings it has; no cache (``use_cache=False``) unless asked: gradient paths are
    those of training, which keeps none."""
    try:
        default = config_class()
    except Exception as exc:
        raise TargetError(
            f"{config_class.__name__}() (for {spec}) failed:\n" + _describe_exception(exc, [])
        ) from None
    known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    # settings kept under other names behind a property (``num_labels`` sets ``id2label``)
    known |= {
        name
        for cls in type(default).__mro__
        for name, value in vars(cls).items()
        if isinstance(value, property) and value.fset is not None and not name.startswith("_")
    }
    with contextlib.suppress(TypeError, ValueError):
        known |= set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    # settings the base class takes and keeps private (``attn_implementation``,
    # ``experts_implementation``: ``config._experts_implementation``)
    unknown = [k for k in kwargs if k not in known and not hasattr(default, f"_{k}")]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TargetError(
            f"{config_class.__name__} has no setting {', '.join(hints)} (given with -k or "
            f"kwargs to {spec}; they set a transformers target's configuration)"
        )
    try:
        config = config_class(**kwargs)
    except Exception as exc:
        raise TargetError(
            f"{config_class.__name__}(**kwargs) (for {spec}) failed:\n"
            + _describe_exception(exc, [])
        ) from None
    if "use_cache" not in kwargs and hasattr(config, "use_cache"):
        config.use_cache = False
    return config


def _image(config: Any, device: str, batch: int = 1) -> torch.Tensor:
    """``batch`` images of the configuration's size (224 × 224 where it has none: a
    ResNet's, DETR's) and channels."""
    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    channels = getattr(config, "num_channels", 3)
    return torch.zeros(batch, channels, height, width, device=device)


def _transformers_inputs(
    model: nn.Module, config: Any, device: str, train: bool
) -> tuple[tuple[torch.Tensor | None, ...] | None, str | None]:
    """Inputs that fit a transformers model, by its main input (token ids, an image, an
    audio clip), with an image beside token ids for two towers (CLIP) and decoder token ids
    for encoder-decoder models, and what they are in words; (None, None) when the
    configuration does not say their size. A model reading images with a batch norm gets
    two of everything in train mode, as timm's do (LeViT's and GroupViT's heads normalise
    after pooling)."""
    main = getattr(model, "main_input_name", "input_ids")
    parameters = list(inspect.signature(model.forward).parameters)
    vision = getattr(config, "vision_config", None)
    towers = main == "input_ids" and vision is not None and "pixel_values" in parameters
    batch, images = _images(model, train) if main == "pixel_values" or towers else (1, "")
    ids = f"{_TOKENS} token ids (all 0)" if batch == 1 else f"{batch} × {_TOKENS} token ids (all 0)"
    values: dict[str, torch.Tensor] = {}
    said = []
    if main == "input_ids":
        values[main] = torch.zeros(batch, _TOKENS, dtype=torch.int64, device=device)
        said.append(ids)
    elif main == "pixel_values":
        values[main] = _image(config, device, batch)
        said.append(f"{images} of the configuration's image_size")
    elif main == "input_features" and hasattr(config, "num_mel_bins"):
        frames = 2 * getattr(config, "max_source_positions", 1500)  # Whisper's two strides
        values[main] = torch.zeros(1, config.num_mel_bins, frames, device=device)
        said.append("1 audio clip of the configuration's length")
    elif main == "input_values":
        values[main] = torch.zeros(1, 16000, device=device)
        said.append("1 second of audio (16,000 samples)")
    else:
        return None, None
    if towers:
        values["pixel_values"] = _image(vision, device, batch)
        said.append(f"{images} of the configuration's image_size")
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in parameters:
        decoder = torch.zeros(batch, _TOKENS, dtype=torch.int64, device=device)
        values["decoder_input_ids"] = decoder
        said.append(ids.replace("token ids", "decoder token ids"))
    if any(name not in parameters for name in values):
        return None, None
    last = max(parameters.index(name) for name in values)
    return tuple(values.get(name) for name in parameters[: last + 1]), ", and ".join(said)
