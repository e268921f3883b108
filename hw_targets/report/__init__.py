"""The deployment report: ``report.json`` (schema ``xoresnet-report``) and ``report.html``.

One home per concept:

* ``schema.json``: the one JSON Schema of ``report.json`` (keys, types, enumerations, bounds, what each minor
  version added, what every key means); ``docs/report-schema.md`` is generated from it
  (:mod:`hw_targets.report.schema_doc`).
* :mod:`~hw_targets.report.schema`: validation against it (``jsonschema``) and what it cannot state (depth,
  encodable strings, the ``lava`` counts, raster indices): :func:`validate_report`, :func:`report_problems`,
  :class:`ReportError` (exit code 3).
* :mod:`~hw_targets.report.assemble`: the JSON from the pipeline's results: :func:`build_report` and its
  sections (``deploy.pipeline.report_of`` calls it with the pipeline's artifacts).
* :mod:`~hw_targets.report.page`: ``report.html`` from the JSON alone (``templates/report.html.j2``, Jinja2 with
  autoescaping; matplotlib plots embedded as PNGs), bounded whatever the report's size: :func:`render_html`.
* :mod:`~hw_targets.report.files`: both files written atomically and read back with bounds:
  :func:`write_report`, :func:`load_report`.
"""

from .assemble import build_report, jsonable, model_section, parity_section
from .files import MAX_REPORT_BYTES, REPORT_HTML, REPORT_JSON, dumps_report, load_report, write_report
from .page import render_html
from .schema import MINOR, SCHEMA, VERSION, ReportError, report_problems, report_schema, validate_report

__all__ = ["MAX_REPORT_BYTES", "MINOR", "REPORT_HTML", "REPORT_JSON", "SCHEMA", "VERSION", "ReportError",
           "build_report", "dumps_report", "jsonable", "load_report",
           "model_section", "parity_section", "render_html", "report_problems", "report_schema",
           "validate_report", "write_report"]
