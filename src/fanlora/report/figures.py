"""The report's pictures of a setting: which modules each layer keeps (the paper's figure
6) and how many layers keep each kind (figure 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fanlora.select.setting import FanLoRASetting
from fanlora.utils.plotting import pyplot, save_figure


def draw_setting(setting: FanLoRASetting, path: str | Path) -> Path:
    """Layers x kinds; a filled cell carries a LoRA module in the setting."""
    plt = pyplot()
    kinds = list(setting.layout.kinds)
    grid = np.zeros((setting.layout.num_layers, len(kinds)))
    for layer, kept in enumerate(setting.layers):
        for kind in kept:
            grid[layer, kinds.index(kind)] = 1
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(kinds), 1.0 + 0.2 * len(grid)))
    ax.imshow(grid, cmap="Greens", vmin=0, vmax=1.4, aspect="auto")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(len(grid)))
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(f"setting: {setting.num_modules} modules, K_max = {setting.k_max}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_kind_counts(setting: FanLoRASetting, path: str | Path) -> Path:
    """A bar per kind: the number of layers whose setting keeps it."""
    plt = pyplot()
    counts = setting.kind_counts()
    fig, ax = plt.subplots(figsize=(4.5, 2.8))
    ax.bar(list(counts), list(counts.values()), color="#3a7d44")
    ax.set_ylabel("layers keeping it")
    ax.set_ylim(0, setting.layout.num_layers)
    ax.set_title("how many layers chose each kind", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_figure1(settings: dict[str, FanLoRASetting], path: str | Path) -> Path:
    """The paper's figure 1 for several models side by side: per model, the kept modules
    by layer (rows: layers, from the input up) and the share of layers keeping each kind."""
    plt = pyplot()
    size = (3.6 * len(settings), 7.0)
    ratios = {"height_ratios": [3, 1]}
    fig, axes = plt.subplots(2, len(settings), figsize=size, squeeze=False, gridspec_kw=ratios)
    for column, (label, setting) in enumerate(settings.items()):
        kinds = list(setting.layout.kinds)
        grid = np.zeros((setting.layout.num_layers, len(kinds)))
        for layer, kept in enumerate(setting.layers):
            grid[layer, [kinds.index(k) for k in kept]] = 1
        top, bottom = axes[0][column], axes[1][column]
        top.imshow(grid, cmap="Greens", vmin=0, vmax=1.4, aspect="auto", origin="lower")
        top.set_xticks(range(len(kinds)), kinds)
        top.set_ylabel("layer")
        top.set_title(
            f"{label}\n{setting.num_modules} modules, K_max = {setting.k_max}", fontsize=9
        )
        shares = [100 * c / setting.layout.num_layers for c in setting.kind_counts().values()]
        bottom.bar(kinds, shares, color="#3a7d44")
        bottom.set_ylim(0, 100)
        bottom.set_ylabel("% of layers")
    fig.tight_layout()
    return save_figure(fig, path)
