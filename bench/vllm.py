"""`fanlora bench vllm` as a script, plus the check of issue 18's goals.

    python bench/vllm.py --setting SETTING.json --engine-setting VLLM_SETTING.json \
        --out bench/results/vllm.json

Runs `fanlora bench vllm` with the other arguments (base, all-module LoRA, FanLoRA
unrestricted and restricted, the engine-aware setting restricted, at 1, 8 and 32 distinct
tenants; PEFT and fanlora's batched path beside them), then adds ``goal_check`` to the JSON:
FanLoRA restricted against all-module LoRA in vLLM at 8 and 32 tenants (``--goal-restricted``,
default 1.4x) and the engine-aware setting likewise (``--goal-engine``, default 2x).
"""

import argparse

from goal_check import run_and_judge


def judge(ratios: dict, restricted: float, engine: float) -> dict:
    """Each goal at 8 and 32 tenants with the measured ratio and whether it is met."""
    out = {}
    for n in ("8", "32"):
        for key, goal in (("fanlora-restricted", restricted), ("engine-restricted", engine)):
            got = ratios.get(n, {}).get(f"{key}_vs_lora")
            if got is not None:
                met = "met" if got >= goal else "not met"
                out[f"{n} tenants: {key} >= {goal}x all-module LoRA"] = f"{got:.2f}x: {met}"
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--goal-restricted", type=float, default=1.4)
    parser.add_argument("--goal-engine", type=float, default=2.0)
    parser.add_argument("--out", default="bench/results/vllm.json")
    goals, rest = parser.parse_known_args()
    run_and_judge(
        ["bench", "vllm", *rest],
        goals.out,
        lambda doc: judge(doc["ratios"], goals.goal_restricted, goals.goal_engine),
    )
