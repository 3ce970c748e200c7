"""Agreement between score files: Spearman (paper table 4), Kendall tau, top-K overlap.

Files may score different modules (exact Shapley on a few layers, say): every statistic
is taken over what both files score. ``within_layer_spearman`` is the mean over shared
layers of the Spearman correlation of that layer's module scores: the ranking that the
setting (top K_max per layer) actually uses.
"""

from __future__ import annotations

import math
import re
import statistics

from scipy.stats import kendalltau, spearmanr

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout
from fanlora.select.scores import ScoreRecord
from fanlora.select.setting import top_modules
from fanlora.utils.io import md_table
from fanlora.utils.plotting import pyplot, save_figure

STATISTICS = ("spearman", "kendall", "within_layer_spearman", "topk_agreement")
TICK_CHARS = 14  # longer labels are numbered on the axes and spelled out in a key below


def _by_key(records: list[ScoreRecord]) -> dict[tuple[int, str], float]:
    return {(r.layer, r.module): r.score for r in records}


def aligned(a: list[ScoreRecord], b: list[ScoreRecord]) -> tuple[list[float], list[float]]:
    """Scores of the modules both files score, in one order."""
    sa, sb = _by_key(a), _by_key(b)
    common = sorted(set(sa) & set(sb))
    if len(common) < 2:
        raise FanLoRAError("the score files share fewer than two modules")
    return [sa[k] for k in common], [sb[k] for k in common]


def shared_layers(a: list[ScoreRecord], b: list[ScoreRecord]) -> list[int]:
    return sorted({r.layer for r in a} & {r.layer for r in b})


def topk_agreement(a, b, layout: ModuleLayout, k: int) -> float:
    """Share of the layers both files score whose kept sets (top-k, non-negative) match."""
    ka, kb = top_modules(a, layout, k), top_modules(b, layout, k)
    layers = shared_layers(a, b)
    return sum(set(ka[layer]) == set(kb[layer]) for layer in layers) / len(layers)


def within_layer_spearman(a, b) -> float:
    """Mean over shared layers of Spearman rho between that layer's module scores (layers
    where either file's scores are all tied are left out); NaN when none is left."""
    sa, sb = _by_key(a), _by_key(b)
    rhos = []
    for layer in shared_layers(a, b):
        keys = sorted(k for k in set(sa) & set(sb) if k[0] == layer)
        xa, xb = [sa[k] for k in keys], [sb[k] for k in keys]
        if len(keys) >= 2 and len(set(xa)) > 1 and len(set(xb)) > 1:
            rhos.append(float(spearmanr(xa, xb).statistic))
    return statistics.mean(rhos) if rhos else math.nan


def compare(files: dict[str, list[ScoreRecord]], layout: ModuleLayout, k: int) -> dict:
    """Pairwise Spearman rho, Kendall tau, within-layer Spearman and top-k agreement, as
    matrices keyed by name."""
    names = list(files)
    out: dict = {"files": names, "k": k, **{key: {} for key in STATISTICS}}
    for x in names:
        for key in STATISTICS:
            out[key][x] = {}
        for y in names:
            va, vb = aligned(files[x], files[y])
            out["spearman"][x][y] = float(spearmanr(va, vb).statistic)
            out["kendall"][x][y] = float(kendalltau(va, vb).statistic)
            out["within_layer_spearman"][x][y] = within_layer_spearman(files[x], files[y])
            out["topk_agreement"][x][y] = topk_agreement(files[x], files[y], layout, k)
    return out


def render_markdown(result: dict, title: str = "Agreement between score files") -> str:
    """One markdown table per statistic of ``compare``'s result."""
    return "\n".join([f"# {title}", "", *agreement_tables(result)])


def agreement_tables(result: dict) -> list[str]:
    names = result["files"]
    labels = {
        "spearman": "Spearman rho over the modules both files score",
        "kendall": "Kendall tau over the modules both files score",
        "within_layer_spearman": "Spearman rho within each shared layer, averaged",
        "topk_agreement": f"share of shared layers with the same kept set "
        f"(top {result['k']}, never negative)",
    }
    parts = []
    for key in STATISTICS:
        rows = [[x, *(f"{result[key][x][y]:.3f}" for y in names)] for x in names]
        parts += [f"{labels[key]}:", "", md_table(["", *names], rows), ""]
    return parts


def plot_labels(names: list[str]) -> list[str]:
    """Each name without the comma- or slash-separated parts that every name shares (grid
    runs ``seed=0,k_max=1`` and ``seed=1,k_max=1``: ``seed=0`` and ``seed=1``); a name
    with nothing of its own stays whole."""
    pieces = [re.split(r"(?<=[,/])", name) for name in names]  # each keeps its separator
    common = set.intersection(*({x.rstrip(",/") for x in own} for own in pieces))
    kept = ["".join(x for x in own if x.rstrip(",/") not in common) for own in pieces]
    return [label.rstrip(",/") or name for label, name in zip(kept, names, strict=True)]


def plot_agreement(result: dict, path, keys=("spearman", "topk_agreement")):
    """Heatmaps of ``compare``'s matrices (Spearman rho, top-k agreement), one panel per
    statistic, every cell labelled with its value: the paper's table 4 at a glance. Files
    are labelled by :func:`plot_labels`, numbered with a key below when one is long."""
    plt = pyplot()
    names = result["files"]
    labels = plot_labels(names)
    key_lines = [] if max(map(len, labels)) <= TICK_CHARS else labels
    ticks = [str(i) for i in range(1, len(names) + 1)] if key_lines else labels
    size = 1.6 + 0.55 * len(names)
    below = 0.17 * len(key_lines) + (0.2 if key_lines else 0.0)  # inches for the key
    fig, axes = plt.subplots(1, len(keys), figsize=(size * len(keys), size + below), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        matrix = [[result[key][x][y] for y in names] for x in names]
        ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if value > 0.6 else "white",
                )
        turn = {"rotation": 45, "ha": "right"} if not key_lines else {}
        ax.set_xticks(range(len(names)), ticks, fontsize=7, **turn)
        ax.set_yticks(range(len(names)), ticks, fontsize=7)
        title = {"topk_agreement": f"same kept set (top {result['k']})"}.get(key, key)
        ax.set_title(title.replace("_", " "), fontsize=9)
    height = size + below
    if key_lines:
        key_text = "\n".join(f"{i}: {label}" for i, label in enumerate(key_lines, 1))
        fig.text(0.01, (below - 0.05) / height, key_text, fontsize=7, va="top", ha="left")
    fig.tight_layout(rect=(0, below / height, 1, 1))
    return save_figure(fig, path)
