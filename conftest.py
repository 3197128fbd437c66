"""pytest set-up of the whole run: the tests of tests/ and the docstring examples of gpa/.

``python -m pytest`` collects tests/ and, with ``--doctest-modules``, every module of gpa/
(``testpaths`` and ``addopts`` in pyproject.toml). This file sits at the root so that it
also applies when only gpa/, or one of its modules, is given on the command line.
"""

import os

# Figures of doctests and tests are drawn off screen, whatever display the machine has.
os.environ.setdefault("MPLBACKEND", "Agg")

# gpa/compare.py and gpa/plot.py put gpa/ci/compare.py and gpa/render/plot.py in their own
# place in sys.modules (the public import paths): those modules' doctests run from there.
collect_ignore = ["gpa/compare.py", "gpa/plot.py"]
