"""The score heatmap (paper figures 5 and 6): layers x module kinds, diverging around 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from fanlora.modules.discovery import ModuleLayout
from fanlora.select.scores import ScoreRecord
from fanlora.select.setting import top_modules
from fanlora.utils.plotting import pyplot, save_figure


def draw_heatmap(
    records: list[ScoreRecord], layout: ModuleLayout, k_max: int, path: str | Path, title: str = ""
) -> Path:
    """Write a PNG: colour = score (blue < 0 < red), a dot = kept for ``k_max``."""
    plt = pyplot()
    kinds = list(layout.kinds)
    grid = np.full((layout.num_layers, len(kinds)), np.nan)
    for r in records:
        grid[r.layer, kinds.index(r.module)] = r.score
    bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    bound = bound or 1.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(kinds), 1.0 + 0.22 * layout.num_layers))
    image = ax.imshow(
        grid, cmap="RdBu_r", aspect="auto", norm=TwoSlopeNorm(vmin=-bound, vcenter=0.0, vmax=bound)
    )
    for layer, kept in enumerate(top_modules(records, layout, k_max)):
        for kind in kept:
            ax.plot(kinds.index(kind), layer, "o", color="black", markersize=4)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(layout.num_layers))
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title or f"importance scores (dots: kept, K_max = {k_max})", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label="score")
    fig.tight_layout()
    return save_figure(fig, path)
