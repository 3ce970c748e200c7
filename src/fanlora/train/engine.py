"""The fine-tuning loop shared by every method (paper appendix C defaults).

One optimizer step takes ``batch_size`` examples (a length-grouped batch), split across
processes and into micro-batches. Logits are computed only at positions that carry a label
in some row of the micro-batch (:func:`~fanlora.models.losses.labelled_logits`). The loss is
the cross-entropy from those logits, summed over the step's response tokens on every process
and divided by their *global* count N:

    L = (1 / N) sum_{rank r} sum_{micro-batch b} sum_{t in b} CE_t

so neither the micro-batch size nor the number of processes changes it (each rank's share is
multiplied by the world size before backward, since DDP averages gradients over ranks).
A method may add a term once per step (AdaLoRA: ``orth_reg_weight * R``,
:func:`~fanlora.models.losses.orthogonal_penalty`), logged under its own name apart from the
loss. AdamW, linear decay after a linear
warm-up, gradient clipping at 1.0 (the transformers default). The dev loss (cross-entropy
only, for every method) is measured every ``eval_every`` steps and at the end; the best
adapter is kept and training stops after ``patience`` evaluations without improvement.
Train and dev rows are seeded draws (:func:`~fanlora.data.registry.load_sample`), never the
file's first rows.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate.utils import send_to_device
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from fanlora.data.formatting import collate, encode_all, encode_reached, length_grouped_batches
from fanlora.data.registry import load_sample
from fanlora.errors import FanLoRAError
from fanlora.models.losses import kept_sequence_losses, labelled_logits
from fanlora.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from fanlora.train.config import TrainConfig
from fanlora.train.methods import get_method
from fanlora.train.outputs import RunFolder
from fanlora.utils.devices import check_distributed, cpu_machine, make_accelerator
from fanlora.utils.stopping import Stopped, StopRequest, stop_on_signals

MAX_GRAD_NORM = 1.0


@dataclass
class Batches:
    """Encoded train and dev rows with the numbers the schedule needs."""

    train: list[dict]
    dev: list[dict]
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    dropped: int


def prepare_data(cfg: TrainConfig, tokenizer) -> Batches:
    train_rows = load_sample(cfg.data, "train", cfg.max_train_examples, cfg.seed)
    dev_rows = load_sample(cfg.data, "dev", cfg.eval_examples, cfg.seed)
    batch = cfg.effective_batch_size(len(train_rows))
    reach = cfg.max_steps * batch if cfg.max_steps is not None else len(train_rows)
    if reach < len(train_rows):  # a short schedule sees at most `reach` rows: encode only those
        train, dropped = encode_reached(tokenizer, train_rows, reach, cfg.max_length, cfg.seed)
    else:
        train, dropped = encode_all(tokenizer, train_rows, cfg.max_length)
    dev, _ = encode_all(tokenizer, dev_rows, cfg.max_length)
    per_epoch = math.ceil(len(train) / batch)
    total = math.ceil(cfg.max_epochs * per_epoch)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if total < 1:
        raise FanLoRAError("the schedule has no step: raise --max-epochs or --max-steps")
    return Batches(train, dev, batch, per_epoch, total, dropped)


def micro_batches(rows: list[dict], indices: list[int], size: int, pad_id: int, device):
    """Collated micro-batches on ``device`` (moved by accelerate's ``send_to_device``)."""
    for start in range(0, len(indices), size):
        yield send_to_device(
            collate([rows[i] for i in indices[start : start + size]], pad_id), device
        )


def label_tokens(rows: list[dict], indices: list[int]) -> int:
    """Tokens that carry loss after the causal shift (labels[1:] != -100)."""
    return sum(sum(1 for t in rows[i]["labels"][1:] if t != -100) for i in indices)


class Trainer:
    """Runs one fine-tuning job into a :class:`RunFolder`."""

    def __init__(self, cfg: TrainConfig, folder: RunFolder, log=print):
        self.cfg, self.folder, self.log = cfg, folder, log
        self.runtime = cfg.runtime()
        self.acc = make_accelerator(self.runtime)
        check_distributed(self.acc)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes

    def setup(self, model, tokenizer, peft_config, data: Batches) -> None:
        torch.manual_seed(self.cfg.seed)  # the same fresh LoRA weights on every process
        if self.cfg.gradient_checkpointing:  # non-reentrant: no input needs requires_grad
            # transformers 5.2x renamed it; the old name stays until v6
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
        self.peft_model = get_peft_model(model, peft_config)
        self.base = model  # the transformers model inside (its forward's signature)
        self.trainable = sum(p.numel() for p in self.peft_model.parameters() if p.requires_grad)
        params = [p for p in self.peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup = math.ceil(self.cfg.warmup_ratio * data.total_steps)
        self.scheduler = get_linear_schedule_with_warmup(optimizer, warmup, data.total_steps)
        self.model, self.optimizer = self.acc.prepare(self.peft_model, optimizer)
        self.data, self.pad_id = data, tokenizer.pad_token_id
        self.method = get_method(self.cfg.method)
        self.method.setup(self.peft_model, self.cfg)
        self.state = TrainState()

    def resume(self) -> None:
        checkpoint = latest_checkpoint(self.folder.checkpoints)
        if checkpoint is None:
            self.log("no checkpoint to resume from: starting at step 0")
            return
        self.state, method_state = load_checkpoint(
            checkpoint, self.peft_model, self.optimizer, self.scheduler
        )
        self.method.restore(self.peft_model, method_state)
        self.folder.truncate_metrics(self.state.step)
        self.log(f"resumed from {checkpoint.name} (step {self.state.step})")

    def begin_sitting(self) -> None:
        """Note where this sitting starts and what it computes on, in the state that each
        checkpoint keeps; say so when an earlier sitting computed in another precision."""
        device = self.runtime.describe(precision=False)
        sitting = {
            "from_step": self.state.step,
            "device": cpu_machine()["cpu"] if self.runtime.device.type == "cpu" else device,
            "precision": self.runtime.precision,
        }
        before = {s["precision"] for s in self.state.sittings} - {sitting["precision"]}
        if before:
            self.log(
                f"note: earlier steps of this run computed in {', '.join(sorted(before))}; "
                f"from step {self.state.step} it computes in {sitting['precision']} here "
                "(run.json's `sittings` records each)"
            )
        self.state.sittings.append(sitting)

    def train_step(self, indices: list[int]) -> tuple[float, int, float | None]:
        """One optimizer step on this process's share of ``indices``; (loss over the whole
        step, this process's tokens, the method's own step term or None)."""
        cfg, data = self.cfg, self.data
        torch.manual_seed(cfg.seed * 1_000_003 + self.state.step * 1009 + self.rank)
        mine = indices[self.rank :: self.world]
        n_items = max(label_tokens(data.train, indices), 1)  # every process's tokens
        self.model.train()
        ce_sum, tokens, penalty = torch.zeros(()), 0, None
        chunks = list(
            micro_batches(data.train, mine, cfg.micro_batch_size, self.pad_id, self.acc.device)
        )
        for i, batch in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = nullcontext() if last else self.acc.no_sync(self.model)
            with sync, self.acc.autocast():
                logits, keep = labelled_logits(self.model, self.base, batch)
                ce = kept_sequence_losses(logits, batch["labels"], keep)[:, 0].sum()
                loss = ce / n_items
                if last:  # once per step, whatever the micro-batch split
                    penalty = self.method.step_loss(self.peft_model)
                    loss = loss if penalty is None else loss + penalty
                self.acc.backward(loss * self.world)  # DDP averages over ranks
            ce_sum += ce.detach().cpu()
            tokens += int(batch["attention_mask"].sum())
        total = float(self.acc.reduce(ce_sum.to(self.acc.device), reduction="sum")) / n_items
        if not math.isfinite(total):
            raise FanLoRAError(
                f"the training loss became {total} at step {self.state.step + 1}; stopped "
                f"before updating. The last good checkpoint is kept in {self.folder.checkpoints}"
            )
        self.acc.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step(self.peft_model, self.state.step + 1)  # before zero_grad
        self.optimizer.zero_grad(set_to_none=True)
        return total, tokens, None if penalty is None else float(penalty.detach())

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy over the dev rows' response tokens, summed across processes
        (from the logits, so a method's own loss term, AdaLoRA's penalty, never enters it)."""
        self.model.eval()
        rows = self.data.dev
        mine = list(range(self.rank, len(rows), self.world))
        loss_sum = torch.zeros(2)
        for batch in micro_batches(
            rows, mine, self.cfg.micro_batch_size, self.pad_id, self.acc.device
        ):
            with self.acc.autocast():
                logits, keep = labelled_logits(self.model, self.base, batch)
            loss_sum += kept_sequence_losses(logits, batch["labels"], keep).sum(0).cpu()
        loss_sum = self.acc.reduce(loss_sum.to(self.acc.device), reduction="sum").cpu()
        return float(loss_sum[0] / max(loss_sum[1], 1))

    def after_eval(self, dev_loss: float) -> None:
        state = self.state
        if dev_loss < state.best_loss:
            state.best_loss, state.best_step, state.bad_evals = dev_loss, state.step, 0
            if self.acc.is_main_process:
                self.folder.save_best(self.peft_model)
        else:
            state.bad_evals += 1
            state.stopped_early = state.bad_evals >= self.cfg.patience

    def run(self) -> TrainState:
        """Train to the last step or an early stop. On SIGTERM or SIGINT the step under way
        finishes, a checkpoint is written and :class:`~fanlora.utils.stopping.Stopped` is
        raised: the same command resumes from it (a second signal stops at once)."""
        cfg, data, state = self.cfg, self.data, self.state
        bar = tqdm(
            total=data.total_steps,
            initial=state.step,
            unit="step",
            disable=not self.acc.is_main_process,
            desc=f"train {cfg.method}",
        )
        epochs = math.ceil(data.total_steps / data.steps_per_epoch)
        with stop_on_signals() as stop:
            while state.step < data.total_steps and not state.stopped_early:
                batches = length_grouped_batches(
                    [len(r["input_ids"]) for r in data.train],
                    data.batch_size,
                    cfg.seed + state.epoch,
                )
                while state.batch_in_epoch < len(batches) and state.step < data.total_steps:
                    record = self.step_and_record(batches[state.batch_in_epoch])
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=record["tokens_per_s"])
                    bar.update(1)
                    if self.stop_asked(stop):
                        bar.close()
                        self.stop_here(stop, checkpointed="dev_loss" in record)
                    if state.stopped_early:
                        self.log(
                            f"early stop at step {state.step}: no better dev loss in "
                            f"{cfg.patience} evaluations"
                        )
                        break
                if state.batch_in_epoch >= len(batches):
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                if state.epoch >= epochs:
                    break
        bar.close()
        return state

    def step_and_record(self, indices) -> dict:
        """One optimizer step, its metrics line, and the dev evaluation and checkpoint every
        ``eval_every`` steps and at the last."""
        cfg, state = self.cfg, self.state
        started = time.perf_counter()
        loss, tokens, penalty = self.train_step(indices)
        state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
        state.tokens += tokens
        record = {
            "step": state.step,
            "epoch": state.epoch,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": tokens * self.world / (time.perf_counter() - started),
        }
        if penalty is not None:
            record[self.method.step_loss_name] = penalty
        if state.step % cfg.eval_every == 0 or state.step == self.data.total_steps:
            record["dev_loss"] = self.evaluate()
            self.after_eval(record["dev_loss"])
            self.checkpoint()
        self.folder.append_metrics(record, self.acc.is_main_process)
        return record

    def stop_asked(self, stop: StopRequest) -> bool:
        """Whether any process received a stop signal: accelerate's trigger, reduced over
        the processes, so that all stop after the same step."""
        if stop.requested:
            self.acc.set_trigger()
        return self.acc.check_trigger()

    def stop_here(self, stop: StopRequest, checkpointed: bool) -> None:
        if not checkpointed:
            self.checkpoint()
        signal_name = stop.name or "a signal on another process"
        raise Stopped(
            f"stopped on {signal_name} after step {self.state.step} of "
            f"{self.data.total_steps}: checkpoint step-{self.state.step} written; the same "
            "command resumes from it"
        )

    def rank_checksums(self) -> list[float]:
        """Sum of the trainable weights on every process (equal when DDP kept them in sync)."""
        total = sum(
            p.detach().double().sum() for p in self.peft_model.parameters() if p.requires_grad
        )
        gathered = self.acc.gather(torch.as_tensor(total).reshape(1).to(self.acc.device))
        return [float(x) for x in gathered.cpu()]

    def checkpoint(self) -> None:
        if self.acc.is_main_process:
            method_state = self.method.state(self.peft_model)
            save_checkpoint(
                self.folder.checkpoints,
                self.peft_model,
                self.optimizer,
                self.scheduler,
                self.state,
                method_state,
            )
        self.acc.wait_for_everyone()
