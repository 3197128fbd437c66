"""``gpa.plot`` is :mod:`gpa.render.plot` under its public import path (the same module object)."""

import sys

from gpa.render import plot as _plot

sys.modules[__name__] = _plot
