"""A source's lightcurve as a PNG: `contimg sources lightcurve NAME --plot FILE.png`.

Peak flux density (mJy/beam) with its error bars against observation MJD, the mean flux as a
dashed line with the +-1 standard deviation band, and the variability statistics (epochs, mean,
V, eta, reduced chi-square, largest deviation) in a box, red when the source passes the
astronomers' candidate threshold (at least 3 epochs and eta > 2 or V > 0.1). The top axis gives
the calendar date (UTC). Drawn with matplotlib's object API on the Agg canvas: no display, no pyplot
state. Needs matplotlib (the `science` extra).
"""

from __future__ import annotations

import os
from typing import Any

from dsa110.contimg.v1 import sources_pb2

from .export import require
from .times import mjd_to_datetime

__all__ = ["FIGSIZE_IN", "PLOT_DPI", "lightcurve_figure", "save_lightcurve", "statistics_text"]

FIGSIZE_IN = (9.0, 5.0)
PLOT_DPI = 100
X_LABEL = "Observation time (MJD)"
Y_LABEL = "Peak flux density (mJy/beam)"


def _title(curve: sources_pb2.GetLightcurveResponse, name: str) -> str:
    source = curve.source
    return source.designation or source.name.removeprefix("sources/") or name.removeprefix("sources/")


def statistics_text(stats: sources_pb2.VariabilityStats) -> str:
    """The variability statistics box, one statistic per line."""
    lines = [
        f"epochs = {stats.epoch_count}",
        f"mean = {stats.mean_flux_jy * 1000:.3f} mJy/beam",
        f"std = {stats.std_flux_jy * 1000:.3f} mJy/beam",
        f"V = {stats.v:.4f}",
        f"eta = {stats.eta:.3f}",
        f"chi2/dof = {stats.chi2_reduced:.3f}",
        f"max deviation = {stats.sigma_deviation:.2f} sigma",
    ]
    lines.append("VARIABLE candidate (eta > 2 or V > 0.1)" if stats.is_variable else "not variable")
    return "\n".join(lines)


# matplotlib's date numbers are days since 1970-01-01 (MJD 40587), its default epoch.
_UNIX_EPOCH_MJD = 40587.0


def _date_number(mjd: Any) -> Any:
    return mjd - _UNIX_EPOCH_MJD


def _mjd_of_date_number(number: Any) -> Any:
    return number + _UNIX_EPOCH_MJD


def lightcurve_figure(curve: sources_pb2.GetLightcurveResponse, name: str = "") -> Any:
    """The figure (a matplotlib Figure on an Agg canvas); `name` titles it when the response has
    no source."""
    figure_module = require("matplotlib.figure", "--plot")
    agg = require("matplotlib.backends.backend_agg", "--plot")
    figure = figure_module.Figure(figsize=FIGSIZE_IN, dpi=PLOT_DPI, layout="constrained")
    agg.FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    points = list(curve.points)
    mjd = [p.observation_mjd for p in points]
    flux = [p.peak_flux_jy * 1000 for p in points]
    error = [p.peak_flux_err_jy * 1000 for p in points]
    stats = curve.source.variability
    colour = "tab:red" if stats.is_variable else "tab:blue"
    if points:
        axes.errorbar(
            mjd, flux, yerr=error, fmt="o", markersize=4, capsize=2, color=colour, ecolor="0.4", label="peak flux"
        )
    else:
        axes.text(0.5, 0.5, "no measurements", transform=axes.transAxes, ha="center", va="center", color="0.4")
    if stats.epoch_count:
        mean = stats.mean_flux_jy * 1000
        std = stats.std_flux_jy * 1000
        axes.axhline(mean, color="0.2", linestyle="--", linewidth=1, label=f"mean {mean:.3f} mJy/beam")
        if std:
            axes.axhspan(mean - std, mean + std, color="0.5", alpha=0.15, linewidth=0, label="mean +- 1 std")
        axes.text(
            0.01,
            0.98,
            statistics_text(stats),
            transform=axes.transAxes,
            ha="left",
            va="top",
            fontsize=8,
            family="monospace",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": colour, "alpha": 0.85},
        )
        axes.legend(loc="lower right", fontsize=8)
    axes.set_xlabel(X_LABEL)
    axes.set_ylabel(Y_LABEL)
    axes.set_title(_title(curve, name))
    axes.grid(True, alpha=0.3)
    axes.ticklabel_format(axis="x", useOffset=False, style="plain")
    if points:
        dates = require("matplotlib.dates", "--plot")
        top = axes.secondary_xaxis("top", functions=(_date_number, _mjd_of_date_number))
        locator = dates.AutoDateLocator()
        top.xaxis.set_major_locator(locator)
        top.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, show_offset=False))
        first, last = mjd_to_datetime(min(mjd)), mjd_to_datetime(max(mjd))
        top.set_xlabel(f"Date (UTC), {first:%Y-%m-%d} to {last:%Y-%m-%d}")
    return figure


def save_lightcurve(curve: sources_pb2.GetLightcurveResponse, path: str | os.PathLike[str], name: str = "") -> None:
    """Draws the lightcurve to a PNG at `path`."""
    lightcurve_figure(curve, name).savefig(os.fspath(path), format="png", dpi=PLOT_DPI)
