"""Loading a model to analyse from a TARGET string, as the CLI receives it.

A TARGET is either

* a path to a Python file, optionally followed by ``:attr``
  (``nets/mine.py`` or ``nets/mine.py:build``), or
* an import spec ``package.module:attr`` (``torchvision.models:resnet50``).

``attr`` (a dotted attribute path is allowed) may name an ``nn.Module``
instance, an ``nn.Module`` subclass or any callable returning an ``nn.Module``.
Without ``:attr`` the model is the first defined of :data:`DEFAULT_NAMES`.

Example inputs come from the same file or module: ``example_inputs`` (a
tensor, a tuple of tensors, or a zero-argument callable returning one) or
``input_shape`` (a tuple of ints, or a list of such tuples); failing both, a
model attribute ``input_shape`` is used. For ``gpa measure``, the file may also define
``example_batches`` (an iterable of batches, or a zero-argument callable returning one)
and ``loss_fn(outputs, batch)`` (the loss; default: gpa's virtual loss).

Every problem a user can cause raises :class:`gpa.errors.TargetError` with
one message that names the problem and what to do about it. Nothing here
depends on click: the CLI only parses options and calls these functions.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import torch
from torch import nn

from gpa.errors import GpaError, TargetError
from gpa.options import parse_input_shapes

__all__ = [
    "DEFAULT_NAMES",
    "LoadedTarget",
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
        example_inputs: positional inputs of ``forward`` (a tuple of tensors),
            or ``None`` when the target defines none.
        input_shape: one shape per positional input, or ``None``. At most one
            of ``example_inputs`` and ``input_shape`` is set; ``example_inputs``
            takes precedence when a file defines both.
        name: display name, e.g. ``"nets/mine.py:build"`` or
            ``"torchvision.models:resnet50"``.
        example_batches: the file's ``example_batches`` (batches for ``gpa measure``:
            an iterable, or a zero-argument callable returning one), or ``None``.
        loss_fn: the file's ``loss_fn(outputs, batch)`` for ``gpa measure``, or ``None``.
    """

    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...] | None
    input_shape: list[tuple[int, ...]] | None
    name: str
    example_batches: Any = None
    loss_fn: Callable[..., Any] | None = None


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
    return f"_gpa_target_{stem}_{digest}"


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
_INPUT_NAMES = ("example_inputs", "input_shape", "example_batches", "loss_fn")


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


def _check_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
    """Check the ``-k`` options against the factory's signature before calling it.

    Unknown keywords and required parameters left without a value get a
    message naming them, instead of a bare ``TypeError`` from the call.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and C extensions: let the call decide
        return
    params = signature.parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            accepted = ", ".join(named) if named else "no keyword arguments"
            raise TargetError(
                f"{label} does not accept {', '.join(repr(k) for k in unknown)} "
                f"(given with -k); it accepts: {accepted}"
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


def _as_shapes(value: Any, label: str) -> list[tuple[int, ...]]:
    try:
        return list(parse_input_shapes(value))
    except GpaError:
        raise TargetError(
            f"{label} must be a tuple of ints like (1, 3, 224, 224), each at least 1, or a "
            f"list of such tuples, got {value!r}"
        ) from None


def _as_inputs(value: Any, label: str) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise TargetError(
        f"{label} must be a tensor, a tuple of tensors or a callable returning one, "
        f"got {type(value).__name__}"
    )


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
        return _as_inputs(value, label), None
    if "input_shape" in namespace:
        return None, _as_shapes(namespace["input_shape"], f"input_shape in {where}")
    shape = getattr(model, "input_shape", None)
    if shape is not None and not isinstance(shape, nn.Module):
        return None, _as_shapes(shape, f"the model's input_shape attribute ({where})")
    return None, None


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


def load_target(spec: str, kwargs: dict[str, Any] | None = None) -> LoadedTarget:
    """Load the model named by a TARGET string, and the inputs its source defines.

    Args:
        spec: ``path/to/file.py``, ``path/to/file.py:attr`` or ``package.module:attr``.
        kwargs: keyword arguments for the factory (``-k key=value`` options).

    Returns:
        The model, its example inputs or input shapes (if any), and a display name.

    Raises:
        TargetError: the file is missing or fails to import, no model is found,
            the factory raises or returns something that is not an ``nn.Module``,
            or the module of an import spec cannot be imported.
    """
    kwargs = dict(kwargs or {})
    spec = spec.strip()
    if not spec:
        raise TargetError("empty target: give a .py file or a package.module:attr import spec")
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

    module, roots = _import_module(head, spec)
    return _finish(module, head, attr, kwargs, roots)


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
    loss_fn = vars(module).get("loss_fn")
    if loss_fn is not None and not callable(loss_fn):
        raise TargetError(f"loss_fn in {where} must be a function (outputs, batch) -> loss")
    return LoadedTarget(
        model=model,
        example_inputs=example_inputs,
        input_shape=input_shape,
        name=f"{where}:{attr}",
        example_batches=vars(module).get("example_batches"),
        loss_fn=loss_fn,
    )
