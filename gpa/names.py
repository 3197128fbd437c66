"""Names of Python objects that are the same on every machine and in every run.

A report and a baseline are compared across runs, checkouts and machines (``gpa check
--baseline`` in CI runs in a fresh clone): what they record of the user's classes and
inputs must not hold a memory address or the path of the checkout. A target file is
imported under a private module name made from its path (:data:`TARGET_MODULE_PREFIX`, its
file stem, a digest of the path); :func:`class_path` and :func:`stable_repr` name it by the
file stem alone.

This module imports nothing of gpa's or torch's (it looks classes up in the modules
imported already).

Example:
    >>> class_path(dict)
    'builtins.dict'
    >>> stable_repr("<_gpa_target_nets_0123456789.Cfg object at 0x7fde14ec7910>")
    '<nets.Cfg object>'
"""

from __future__ import annotations

import re
import sys

__all__ = ["PACKAGE_DIRS", "TARGET_MODULE_PREFIX", "class_path", "installed_path", "stable_repr"]

#: The start of the ``sys.modules`` name a target file is imported under
#: (``_gpa_target_<stem>_<digest of its path>``, :mod:`gpa.target`).
TARGET_MODULE_PREFIX = "_gpa_target_"

_TARGET_MODULE = re.compile(re.escape(TARGET_MODULE_PREFIX) + r"(\w+?)_[0-9a-f]{10}\b")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_repr(text: str) -> str:
    """``text`` (a ``repr``) without memory addresses, and with a target file's module
    named by the file's stem."""
    return _ADDRESS.sub("", _TARGET_MODULE.sub(r"\1", text))


def class_path(cls: type) -> str:
    """``module.QualifiedName`` of ``cls``, by the shortest module path that holds it
    (``torch.nn.Linear``, not ``torch.nn.modules.linear.Linear``); a target file's module
    named by its stem.

    Example:
        >>> import collections
        >>> class_path(collections.OrderedDict)
        'collections.OrderedDict'
    """
    parts = cls.__module__.split(".")
    for end in range(1, len(parts)):
        module = sys.modules.get(".".join(parts[:end]))
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return stable_repr(f"{module.__name__}.{cls.__qualname__}")
    return stable_repr(f"{cls.__module__}.{cls.__qualname__}")


#: The directories installed packages live in (a virtualenv's, the system's).
PACKAGE_DIRS = ("site-packages", "dist-packages")


def installed_path(file: str) -> str | None:
    """The path of ``file`` from the directory of the installed package holding it (the
    same wherever the virtualenv is), or None for a file of no installed package.

    Example:
        >>> installed_path("/venv/lib/python3.11/site-packages/ultralytics/nn/tasks.py")
        'ultralytics/nn/tasks.py'
        >>> installed_path("nets/mine.py") is None
        True
    """
    parts = file.replace("\\", "/").split("/")
    found = [i for i, part in enumerate(parts) if part in PACKAGE_DIRS]
    return "/".join(parts[found[-1] + 1 :]) if found else None
