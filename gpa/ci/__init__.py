"""``gpa check`` and ``gpa compare``: models held to gradient-path rules in CI.

- :mod:`~gpa.ci.config`: ``[tool.gpa]`` in ``pyproject.toml``.
- :mod:`~gpa.ci.rules`: the rules and their evaluation on a report.
- :mod:`~gpa.ci.baseline`: recorded metrics and the regressions against them.
- :mod:`~gpa.ci.check`: the gate: every model analysed and judged.
- :mod:`~gpa.ci.formats`: its output as text, JSON, JUnit XML, GitHub annotations, SARIF.
- :mod:`~gpa.ci.compare`: two reports (or a report and a baseline) side by side.

The formats and options are documented in ``docs/ci.md``.
"""
