"""Agreement between score files: Spearman (paper table 4), Kendall tau, top-K overlap."""

from __future__ import annotations

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout
from fanlora.select.scores import ScoreRecord
from fanlora.select.setting import top_modules


def aligned(a: list[ScoreRecord], b: list[ScoreRecord]) -> tuple[list[float], list[float]]:
    """Scores of the modules both files score, in one order."""
    sa = {(r.layer, r.module): r.score for r in a}
    sb = {(r.layer, r.module): r.score for r in b}
    common = sorted(set(sa) & set(sb))
    if len(common) < 2:
        raise FanLoRAError("the score files share fewer than two modules")
    return [sa[k] for k in common], [sb[k] for k in common]


def topk_agreement(a, b, layout: ModuleLayout, k: int) -> float:
    """Share of layers whose kept sets (top-k, non-negative) are identical."""
    ka, kb = top_modules(a, layout, k), top_modules(b, layout, k)
    return sum(set(x) == set(y) for x, y in zip(ka, kb, strict=True)) / layout.num_layers


def compare(files: dict[str, list[ScoreRecord]], layout: ModuleLayout, k: int) -> dict:
    """Pairwise Spearman rho, Kendall tau and top-k agreement, as matrices keyed by name."""
    from scipy.stats import kendalltau, spearmanr

    names = list(files)
    out = {"files": names, "k": k, "spearman": {}, "kendall": {}, "topk_agreement": {}}
    for x in names:
        for key in ("spearman", "kendall", "topk_agreement"):
            out[key][x] = {}
        for y in names:
            va, vb = aligned(files[x], files[y])
            out["spearman"][x][y] = float(spearmanr(va, vb).statistic)
            out["kendall"][x][y] = float(kendalltau(va, vb).statistic)
            out["topk_agreement"][x][y] = topk_agreement(files[x], files[y], layout, k)
    return out
