"""`fanlora bench tenants` as a script, plus the check of this benchmark's goals.

    python bench/tenants.py --setting SETTING.json --out bench/results/tenants.json

Runs `fanlora bench tenants` with the other arguments, then adds ``goal_check`` to the JSON:
at the smallest goal size, the batched path against PEFT's ``adapter_names``
(``--goal-vs-peft``, default 1.3x) and against the batched path with one adapter for the
whole batch (``--goal-vs-one``, default within 5%); at the largest, whether the gap widens.
"""

import argparse

from goal_check import run_and_judge


def judge(goals: dict, vs_peft: float, vs_one: float) -> dict:
    """Each goal with the measured ratio and whether it is met."""
    out = {}
    sizes = sorted(goals, key=int)
    if sizes:
        n, r = sizes[0], goals[sizes[0]]["ratios"]
        met = r["batched_vs_peft"] >= vs_peft
        out[f"{n} tenants: batched >= {vs_peft}x PEFT"] = (
            f"{r['batched_vs_peft']:.2f}x: {'met' if met else 'not met'}"
        )
        one = r["batched_distinct_vs_one_adapter"]
        out[f"{n} tenants: batched >= {vs_one} of one adapter"] = (
            f"{one:.3f}: {'met' if one >= vs_one else 'not met'}"
        )
    if len(sizes) > 1:
        a = goals[sizes[0]]["ratios"]["batched_vs_peft"]
        b = goals[sizes[-1]]["ratios"]["batched_vs_peft"]
        out[f"{sizes[-1]} tenants: the gap to PEFT widens"] = (
            f"{b:.2f}x vs {a:.2f}x at {sizes[0]}: {'yes' if b > a else 'no'}"
        )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--goal-vs-peft", type=float, default=1.3)
    parser.add_argument("--goal-vs-one", type=float, default=0.95)
    parser.add_argument("--out", default="bench/results/tenants.json")
    goals, rest = parser.parse_known_args()
    run_and_judge(
        ["bench", "tenants", *rest],
        goals.out,
        lambda doc: judge(doc.get("goals", {}), goals.goal_vs_peft, goals.goal_vs_one),
    )
