"""AdaLoRA (PEFT): SVD-form LoRA on every module whose ranks are pruned by importance.

PEFT's budget schedule: warm up ``tinit`` steps at ``init_r``, prune to a total of
``target_r x N`` singular triplets over the N modules by ``total_step - tfinal``,
reallocating every ``deltaT`` steps (``update_and_allocate`` after each optimizer step).
PEFT's ``target_r`` is an integer; a fractional average target rank a sets the allocator's
total to round(a N) directly (PEFT has no option for it). Its orthogonality penalty is added
once per step (:func:`~fanlora.models.losses.orthogonal_penalty`), and the rank allocator's
state is checkpointed so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import AdaLoraConfig, TaskType

from fanlora.models.losses import orthogonal_penalty
from fanlora.select.budget import adalora_kept_params, adalora_ranks
from fanlora.train.methods.base import Method, register

ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")


@dataclass(frozen=True)
class AdaLoRA(Method):
    def alpha(self, cfg) -> int:
        """PEFT's AdaLoRA scales by alpha / ranknum, ranknum being its *initial* rank (the
        schedule masks singular values, never ranknum): alpha = 2 x init rank."""
        return cfg.alpha if cfg.alpha is not None else 2 * cfg.adalora_init_rank

    def peft_config(self, cfg, layout, total_steps, setting):
        tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
        return AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=cfg.adalora_init_rank,
            target_r=max(1, round(cfg.adalora_target_rank)),
            lora_alpha=self.alpha(cfg),
            lora_dropout=cfg.dropout,
            target_modules=layout.all_names(),
            total_step=max(total_steps, tinit + tfinal + 1),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, total_steps // 50),
        )

    def match_budget(self, setting, target, seed):
        init, rank, match = adalora_ranks(setting.layout, target)
        return {"adalora_target_rank": rank, "adalora_init_rank": init}, match

    def setup(self, peft_model, cfg):
        """The allocator's total, round(a N), for a fractional average target rank a: set
        by hand because PEFT's only handle on it is the integer ``target_r`` (x N)."""
        allocator = peft_model.base_model.rankallocator
        allocator.target_bgt = max(1, round(cfg.adalora_target_rank * len(allocator.name_set)))

    def kept_params(self, adapter_config, layout):
        pattern = adapter_config.get("rank_pattern")
        return adalora_kept_params(layout, pattern) if pattern else None

    def step_loss(self, peft_model):
        config = peft_model.peft_config[peft_model.active_adapter]
        return config.orth_reg_weight * orthogonal_penalty(peft_model)

    def after_step(self, peft_model, step):
        peft_model.base_model.update_and_allocate(step)

    def state(self, peft_model):
        allocator = peft_model.base_model.rankallocator
        config = peft_model.peft_config[peft_model.active_adapter]
        kept = {name: getattr(allocator, name) for name in ALLOCATOR_STATE}
        return {**kept, "rank_pattern": config.rank_pattern}

    def restore(self, peft_model, state):
        if not state:
            return
        allocator = peft_model.base_model.rankallocator
        for name in ALLOCATOR_STATE:
            setattr(allocator, name, state[name])
        peft_model.peft_config[peft_model.active_adapter].rank_pattern = state["rank_pattern"]


register(
    AdaLoRA(
        "adalora",
        "AdaLoRA on every module (init rank, average target rank)",
        matched=True,
        revision=1,  # 1: a fractional average target rank (the total budget matched)
        batched_serving=False,
        vllm_serving=False,
        step_loss_name="orth_penalty",
    )
)
