"""(IA)3: learned scaling vectors on the outputs of q, k and up (the paper's choice)."""

from __future__ import annotations

from dataclasses import dataclass

from peft import IA3Config, TaskType

from fanlora.errors import FanLoRAError
from fanlora.train.methods.base import Method, register


@dataclass(frozen=True)
class IA3(Method):
    def peft_config(self, cfg, layout, total_steps, setting):
        unknown = [k for k in cfg.ia3_kinds if k not in layout.kinds]
        if unknown:
            raise FanLoRAError(
                f"ia3_kinds {unknown} are not kinds of this model ({', '.join(layout.kinds)})"
            )
        # The paper scales the *outputs* (activations) of q, k and up, so no module is a
        # PEFT "feedforward" module (those scale their input instead).
        targets = [layout.name(i, k) for i in range(layout.num_layers) for k in cfg.ia3_kinds]
        return IA3Config(
            task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=[]
        )


register(
    IA3(
        "ia3",
        "(IA)3 scaling of q, k and up activations",
        ranked=False,
        batched_serving=False,
        vllm_serving=False,
    )
)
