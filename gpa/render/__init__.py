"""Renderings of a :class:`~gpa.core.report.Report`; none changes a number.

- :mod:`~gpa.render.text`: the text table and CSV.
- :mod:`~gpa.render.html`: one HTML page (``--format html``, Jupyter).
- :mod:`~gpa.render.plot`: figures (the paper's Fig. 7 and 8, histograms, profiles).
- :mod:`~gpa.render.graph`: the layer graph as DOT, GraphML or node-link JSON.
- :mod:`~gpa.render.explain`: path witnesses (``gpa explain``).
"""
