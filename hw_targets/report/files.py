"""``report.json`` and ``report.html`` on disk: validated before they are written (atomically: temporary file,
fsync, rename) and when they are read back (a regular file of bounded size; one-line errors, exit code 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from xoresnet.files import atomic_write, read_bounded

from .assemble import jsonable
from .page import render_html
from .schema import ReportError, validate_report

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
#: The largest report.json read back (XOResNet-101's is a few MB).
MAX_REPORT_BYTES = 256 << 20


def dumps_report(report: dict) -> str:
    return json.dumps(report, indent=1, allow_nan=False) + "\n"


def write_report(out_dir: str | os.PathLike, report: dict) -> tuple[Path, Path]:
    """Validate ``report`` and write ``out_dir/report.json`` and ``out_dir/report.html`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = validate_report(jsonable(report))
    page = render_html(report)
    jpath, hpath = out / REPORT_JSON, out / REPORT_HTML
    atomic_write(jpath, dumps_report(report))
    atomic_write(hpath, page)
    return jpath, hpath


def _no_constant(name: str):
    raise ValueError(f"holds {name}, which JSON does not allow (a report's numbers are finite)")


def load_report(path: str | os.PathLike) -> dict:
    """Read and validate a report.json (a directory means ``DIR/report.json``; a regular file of at most
    :data:`MAX_REPORT_BYTES`); :class:`ReportError` else."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    try:
        text = read_bounded(p, what=str(p), limit=MAX_REPORT_BYTES, error=ReportError).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReportError(f"{p} cannot be read ({type(e).__name__}: {e})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ReportError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ReportError(f"{p} is JSON nested too deeply for a report") from None
    except ValueError as e:  # NaN/Infinity, or an integer longer than Python converts (4300 digits)
        reason = str(e) if str(e).startswith("holds ") else "holds an integer too long to convert"
        raise ReportError(f"{p} {reason}") from None
    try:
        return validate_report(data)
    except ReportError as e:
        raise ReportError(f"{p}: {e}") from None
