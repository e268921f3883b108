"""``report.html``: one self-contained page rendered from a (valid) report alone.

The page is ``templates/report.html.j2`` rendered by Jinja2 with autoescaping (every value from the report
is escaped; the template alone writes markup) and ``StrictUndefined`` (a key the template names that the
report lacks is an error, not a blank). The plots are base64 PNGs drawn here with matplotlib's Agg canvas
(no external assets); their text is the report's, shown literally (``$`` is not mathtext).

What the page draws is bounded, whatever the report's size (the schema bounds the rest,
``schema.json``): at most :data:`MAX_TABLE_ROWS` rows per table or list (the rest counted, all of it in
report.json), :data:`MAX_PLOT_LAYERS` bars per per-layer plot, :data:`RASTER_PANELS` raster panels of at
most :data:`MAX_RASTER_POINTS` spikes each (evenly subsampled), tick labels for every timestep only up to
:data:`MAX_RASTER_TICKS` timesteps, :data:`LAVA_COLUMNS` parity samples as columns and
:data:`MAX_LISTED_PREDICTIONS` predictions listed.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any, Optional

import numpy as np

#: Rows shown per table or list (per-layer, blocks, Lava, fan-in splits, warnings, ...).
MAX_TABLE_ROWS = 1000
#: Bars per per-layer plot (firing rate, cores): the first ones in topological order.
MAX_PLOT_LAYERS = 200
#: Raster panels (evenly chosen among the populations shown) and spikes drawn per panel.
RASTER_PANELS = 12
MAX_RASTER_POINTS = 4000
#: Up to this many timesteps the raster labels every timestep; beyond, matplotlib's integer ticks.
MAX_RASTER_TICKS = 32
#: Samples shown as columns of the Lava table (all of them are in report.json).
LAVA_COLUMNS = 8
#: Predictions listed in the Lava paragraph.
MAX_LISTED_PREDICTIONS = 64

_KIND_COLORS = {"neuron": "#3b6fb6", "gate": "#e08a2c", "relay": "#9a9a9a", "partial_sum": "#8e6bb8", "readout": "#5a9e5a"}
_ENERGY_COLORS = {"synaptic_ops": "#3b6fb6", "graded_input_ops": "#7fa7dd", "neuron_updates_active": "#d9534f",
                  "neuron_updates_inactive": "#f0a6a4", "spike_messages": "#5a9e5a", "macs": "#8e6bb8",
                  "accumulates": "#e08a2c", "input_macs": "#c9a227"}


# ---------------------------------------------------------------------- plots

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _literal(text: str) -> str:
    """``text`` as matplotlib shows it literally (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _bar_per_layer(names: list[str], values: list[float], kinds: list[str], xlabel: str, title: str,
                   fmt: str) -> str:
    if len(names) > MAX_PLOT_LAYERS:
        title = f"{title} (the first {MAX_PLOT_LAYERS} of {len(names):,} layers)"
        names, values, kinds = names[:MAX_PLOT_LAYERS], values[:MAX_PLOT_LAYERS], kinds[:MAX_PLOT_LAYERS]
    fig = _figure(6.2, max(2.2, 0.24 * len(names) + 1.0))
    ax = fig.add_subplot(111)
    y = np.arange(len(names))
    ax.barh(y, values, color=[_KIND_COLORS.get(k, "#777") for k in kinds])
    ax.set_yticks(y, [_literal(n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    top = max(values, default=0) or 1
    for yi, v in zip(y, values):
        ax.text(v + top * 0.01, yi, fmt.format(v), va="center", fontsize=6)
    ax.set_xlim(0, top * 1.15)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in _KIND_COLORS.items() if k in kinds]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.9 / fig.get_figheight()),
              ncol=len(handles), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def plot_firing_rates(report: dict) -> str:
    layers = report["statistics"]["layers"]
    return _bar_per_layer([l["name"] for l in layers], [l["firing_rate"] for l in layers],
                          [l["kind"] for l in layers], "firing rate (spikes per neuron per timestep)",
                          "Firing rate per layer", "{:.3f}")


def plot_cores(report: dict) -> str:
    layers = report["drc"]["layers"]
    return _bar_per_layer([l["name"] for l in layers], [l["cores"] for l in layers], [l["kind"] for l in layers],
                          "neuro-cores (one layer tile per core)", "Cores per layer", "{:.0f}")


def plot_energy(report: dict) -> str:
    e = report["energy"]
    models = [("Loihi (Loihi-1-calibrated est.)", e["loihi"]), ("ANN, 45 nm MACs", e["ann"]),
              ("SNN accumulates, 45 nm", e["snn_ac"])]
    fig = _figure(7.0, 2.8)
    ax = fig.add_subplot(111)
    seen = set()
    totals = []
    for i, (label, m) in enumerate(models):
        left = 0.0
        for op, pj in m["breakdown_pj"].items():
            nj = pj / 1000.0
            ax.barh(i, nj, left=left, color=_ENERGY_COLORS.get(op, "#777"),
                    label=_literal(op.replace("_", " ")) if op not in seen else None)
            seen.add(op)
            left += nj
        totals.append(left)
    top = max(totals) or 1
    for i, v in enumerate(totals):
        ax.text(v + top * 0.01, i, f"{v:,.1f} nJ", va="center", fontsize=8)
    ax.set_yticks(range(len(models)), [m[0] for m in models], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel("energy per inference (nJ)")
    ax.set_title("Energy per inference by operation type (estimates)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def raster_populations(report: dict, max_panels: int = RASTER_PANELS) -> list[str]:
    """Which populations the raster shows: neurons and block outputs, skipping relays and gate parts
    (the AND of an XOR), by their ``role``."""
    r = report.get("raster") or {}
    pops = r.get("populations", {})
    roles = {l["name"]: l.get("role") for l in report["statistics"]["layers"]}
    names = [n for n in pops if roles.get(n) not in ("relay", "gate_part")]
    if len(names) > max_panels:
        idx = np.unique(np.linspace(0, len(names) - 1, max_panels).round().astype(int))
        names = [names[i] for i in idx]
    return names


def plot_raster(report: dict) -> Optional[str]:
    r = report.get("raster")
    if not r:
        return None
    names = raster_populations(report)
    if not names:
        return None
    from matplotlib.ticker import MaxNLocator

    kinds = {l["name"]: l["kind"] for l in report["statistics"]["layers"]}
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.0 * cols, 2.6 * rows)
    T = r["timesteps"]
    for i, name in enumerate(names):
        p = r["populations"][name]
        t, n = p["t"], p["n"]
        if len(t) > MAX_RASTER_POINTS:  # evenly subsampled, as the statistics do beyond their cap
            idx = np.unique(np.linspace(0, len(t) - 1, MAX_RASTER_POINTS).round().astype(np.int64))
            t, n = np.asarray(t)[idx], np.asarray(n)[idx]
        ax = fig.add_subplot(rows, cols, i + 1)
        ms = 2.0 if p["neurons"] <= 2048 else 1.0
        ax.plot(t, n, ls="", marker="_", ms=6, mew=ms * 0.6, color=_KIND_COLORS.get(kinds.get(name), "k"))
        ax.set_xlim(-0.5, T - 0.5)
        ax.set_ylim(-0.5, p["neurons"] - 0.5)
        if T <= MAX_RASTER_TICKS:
            ax.set_xticks(range(T))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.invert_yaxis()
        trunc = f", {len(t)} shown (subsampled)" if p["truncated"] or len(t) < len(p["t"]) else ""
        ax.set_title(f"{_literal(name)}\n{p['total']} spikes / {p['neurons']} neurons{trunc}", fontsize=7)
        ax.tick_params(labelsize=6)
        if i % cols == 0:
            ax.set_ylabel("neuron (C,H,W flat)", fontsize=7)
        if i >= (rows - 1) * cols:
            ax.set_xlabel("timestep", fontsize=7)
    fig.suptitle(f"Spike raster of sample {r['sample']} (zero-delay integer reference)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------- text (Jinja2 filters; plain text, escaped
# by the template's autoescaping)

def number(x: Any, digits: int = 3) -> str:
    """A count or figure for a table cell: ints grouped by thousands, floats to ``digits`` significant digits
    (grouped from 1000 on), ``–`` for null, yes/no for booleans, anything else as text."""
    if x is None:
        return "\u2013"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def percent(x: Optional[float]) -> str:
    return "\u2013" if x is None else f"{100 * x:.2f}%"


def energy(pj: float) -> str:
    """Picojoules in pJ, nJ or µJ, three significant digits."""
    if pj >= 1e6:
        return f"{pj / 1e6:.3g} \u00b5J"
    if pj >= 1e3:
        return f"{pj / 1e3:.3g} nJ"
    return f"{pj:.3g} pJ"


def grouped(x: float, decimals: int = 0) -> str:
    """``x`` with thousands separators: ints as they are, floats with ``decimals`` decimals."""
    return f"{x:,}" if isinstance(x, int) and not decimals else f"{x:,.{decimals}f}"


_SIGNS = {"mixed": "\u00b1", "excitatory": "+", "inhibitory": "\u2212"}


def signs(modes: list[str]) -> str:
    """Sign modes as symbols: ± mixed, + excitatory, − inhibitory (the schema's ``sign_mode`` values)."""
    return "".join(_SIGNS[m] for m in modes)


def listed(values: list, cap: int = MAX_LISTED_PREDICTIONS) -> str:
    """A list as Python writes it, its first ``cap`` items when longer."""
    if len(values) <= cap:
        return str(values)
    return f"{str(values[:cap])[:-1]}, \u2026] ({len(values):,} in all)"


def capped(rows: list, cap: int = MAX_TABLE_ROWS) -> tuple[list, int]:
    """``(the first cap rows, how many more there are)``."""
    return rows[:cap], max(0, len(rows) - cap)


# ---------------------------------------------------------------------- the page

@functools.cache
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(num=number, pct=percent, energy=energy, grouped=grouped, signs=signs, listed=listed,
                       capped=capped)
    return env


def render_html(report: dict) -> str:
    """The self-contained HTML page of a (valid) report."""
    plots = {"firing": plot_firing_rates(report), "cores": plot_cores(report), "raster": plot_raster(report),
             "energy": plot_energy(report)}
    stat_by = {l["name"]: l for l in report["statistics"]["layers"]}
    return _environment().get_template("report.html.j2").render(
        r=report, plots=plots, stat_by=stat_by, lava_columns=LAVA_COLUMNS, max_rows=MAX_TABLE_ROWS,
        max_plot_layers=MAX_PLOT_LAYERS)
