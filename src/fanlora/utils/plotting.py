"""matplotlib without a display, and figures saved atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from fanlora.utils.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    matplotlib.use("Agg")
    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG through a temporary file, then close it."""
    pyplot()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def tenant_curves(curves: list[tuple[str, str, list]], path: str | Path, ylabel: str, title: str):
    """Plot speed against distinct tenants (log2 axis), one ``(label, style, [(n, y)])`` curve
    each, and save it to ``path``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, style, points in curves:
        ax.plot(*zip(*sorted(points), strict=True), style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distinct tenants in the batch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
