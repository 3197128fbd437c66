"""``gpa.compare`` is :mod:`gpa.ci.compare` under its public import path (the same module object)."""

import sys

from gpa.ci import compare as _compare

sys.modules[__name__] = _compare
