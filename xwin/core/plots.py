"""Figures for the reports (select's reward plots, eval's win rates, the run report). Drawn with
matplotlib's object API, never pyplot: no global backend or figure registry, so nothing needs a
display or an explicit close, and plotting from several threads is safe."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def new_figure(width: float, height: float) -> tuple[Any, Any]:
    """(figure, axes) of one plot, width x height inches."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def save_figure(figure: Any, path: Path, dpi: int = 110) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path
