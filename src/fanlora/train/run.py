"""``train(cfg, out)``: load, build the method's PEFT model, fine-tune, write the run folder."""

from __future__ import annotations

import time

from fanlora.errors import FanLoRAError
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.train.config import TrainConfig
from fanlora.train.engine import Trainer, prepare_data
from fanlora.train.methods import build_peft_config, get_method
from fanlora.train.outputs import RunFolder, config_hash
from fanlora.utils.devices import cpu_has_native_bf16
from fanlora.utils.io import read_json
from fanlora.utils.versions import versions


def train(
    cfg: TrainConfig, out: str, resume: bool = False, overwrite: bool = False, log=print
) -> dict:
    """Fine-tune per ``cfg`` into folder ``out``; return the run record (also run.json)."""
    started = time.time()
    folder = RunFolder(out)
    # everything that can refuse the run is checked before the output folder is touched:
    # a refused command creates nothing
    setting = FanLoRASetting.load(cfg.setting) if cfg.setting else None
    cfg_hash = config_hash(cfg.to_dict(), [cfg.setting])
    done = folder.finished_record(cfg_hash) if resume and not overwrite else None
    if done is not None:
        log(f"{out} already holds this finished run; nothing to do")
        return done
    folder.check_claim(cfg_hash, resume, overwrite)
    trainer = Trainer(cfg, folder, log)
    if trainer.acc.device.type == "cpu" and cfg.dtype != "float32" and not cpu_has_native_bf16():
        log(
            f"note: this CPU has no AVX512-BF16 or AMX, so {cfg.dtype} weights train slowly "
            "(a SmolLM2 step took 24x float32's on an AVX2 host, in the backward matmuls)"
        )
    with trainer.acc.main_process_first():  # the first load may write the model cache
        model, tokenizer = load_model(cfg.model, cfg.dtype)
    layout = discover_layout(model)
    data = prepare_data(cfg, tokenizer)
    peft_config = build_peft_config(cfg, layout, data.total_steps, setting)
    if trainer.acc.is_main_process:
        folder.claim(cfg_hash, resume, overwrite)
    trainer.acc.wait_for_everyone()
    trainer.setup(model, tokenizer, peft_config, data)
    record = {
        "status": "running",
        "config": cfg.to_dict(),
        "config_hash": cfg_hash,
        "versions": versions(),
        "seed": cfg.seed,
        "trainable_params": trainer.trainable,
        "train_examples": len(data.train),
        "dropped_examples": data.dropped,
        "batch_size": data.batch_size,
        "total_steps": data.total_steps,
        "world_size": trainer.world,
        "device": trainer.acc.device.type,
        "mixed_precision": trainer.acc.mixed_precision,
        "peft_type": type(peft_config).__name__,
    }
    log(
        f"{cfg.method}: {trainer.trainable:,} trainable parameters; {len(data.train)} train "
        f"rows ({data.dropped} dropped: response too long), batch {data.batch_size}, "
        f"{data.total_steps} steps on {trainer.world} process(es)"
    )
    if trainer.acc.is_main_process:
        folder.write_run(record)
    if resume:
        trainer.resume()
    state = trainer.run()
    checksums = trainer.rank_checksums()
    if trainer.acc.is_main_process:
        if state.best_step < 0:
            raise FanLoRAError("training ended without an evaluation; nothing to publish")
        folder.publish_best()
        kept = get_method(cfg.method).kept_params(
            read_json(folder.path / "adapter_config.json", "adapter config"), layout
        )
        if kept is not None:
            record["kept_params"] = kept
        record.update(
            status="finished",
            steps=state.step,
            best_step=state.best_step,
            best_dev_loss=state.best_loss,
            stopped_early=state.stopped_early,
            tokens=state.tokens,
            wall_time_s=round(time.time() - started, 2),
            rank_weight_checksums=checksums,
        )
        folder.write_run(record)
    trainer.acc.wait_for_everyone()
    return record
