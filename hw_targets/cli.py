"""``xoresnet-report DIR``: re-render ``DIR/report.html`` from ``DIR/report.json``.

The JSON is validated first (``hw_targets/report/schema.json``, see :mod:`hw_targets.report`);
a missing, corrupt or invalid file is a one-line error with exit code 3
(:class:`hw_targets.report.ReportError`), a usage error one line with exit code 2
(:class:`xoresnet.errors.OneLineArgumentParser`), success exits with 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from xoresnet.errors import OneLineArgumentParser, UsageError, run_cli


def report_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="xoresnet-report",
        description="Re-render DIR/report.html from DIR/report.json (validated against the report schema; "
                    "see docs/report-schema.md).")
    p.add_argument("dir", metavar="DIR", help="folder holding report.json")
    p.add_argument("-o", "--output", help="write the page here instead of DIR/report.html")
    return p


def _report(args: argparse.Namespace) -> int:
    from xoresnet.files import atomic_write

    from .report import REPORT_HTML, ReportError, load_report, render_html

    d = Path(args.dir)
    if not d.is_dir():
        raise ReportError(f"{d} is not a directory")
    report = load_report(d)
    out = Path(args.output) if args.output else d / REPORT_HTML
    try:
        atomic_write(out, render_html(report))
    except OSError as e:
        raise UsageError(f"cannot write {out} ({type(e).__name__}: {e.strerror or e})") from None
    print(f"wrote {out}")
    return 0


def report_main(argv: Optional[list[str]] = None) -> None:
    run_cli("xoresnet-report", lambda: _report(report_parser().parse_args(argv)))
