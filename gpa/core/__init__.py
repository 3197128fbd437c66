"""The gradient graph and the analyses over it; no module here reads a model.

- :mod:`~gpa.core.graph`: :class:`~gpa.core.graph.GradientGraph`, what every frontend builds.
- :mod:`~gpa.core.paths`: gradient paths of every node (lengths, counts, timestamps, sources).
- :mod:`~gpa.core.records`: one :class:`~gpa.core.report.LayerRecord` per layer, built once.
- :mod:`~gpa.core.segments`: channel segments of a record and their gradient combinations.
- :mod:`~gpa.core.report`: :class:`~gpa.core.report.Report`, what every surface reads.
- :mod:`~gpa.core.serialize`: a report's JSON; :mod:`~gpa.core.frozen`: records in bulk.

Where each part sits among gpa's packages: ``docs/architecture.md``.
"""
