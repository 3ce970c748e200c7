"""``train(cfg, out)``: load, build the method's PEFT model, fine-tune, write the run folder."""

from __future__ import annotations

import time

from fanlora.errors import FanLoRAError
from fanlora.models import load_config, load_model
from fanlora.models.provenance import MadeFor, check_made_for
from fanlora.modules import discover_layout
from fanlora.modules.discovery import layout_from_config
from fanlora.select import FanLoRASetting
from fanlora.train.config import TrainConfig
from fanlora.train.engine import Trainer, prepare_data
from fanlora.train.methods import build_peft_config, get_method
from fanlora.train.outputs import RunFolder, config_hash
from fanlora.utils.devices import cpu_has_native_bf16, is_main_rank
from fanlora.utils.io import read_json
from fanlora.utils.versions import versions


def train(
    cfg: TrainConfig,
    out: str,
    resume: bool = False,
    overwrite: bool = False,
    log=print,
    allow_other_model: bool = False,
) -> dict:
    """Fine-tune per ``cfg`` into folder ``out``; return the run record (also run.json).
    With ``overwrite`` the new run is built aside and replaces the old one once finished."""
    started = time.time()
    folder = RunFolder(out)
    # everything that can refuse the run is checked before the output folder is touched:
    # a refused command creates nothing
    setting = load_setting_for(cfg, allow_other_model, log) if cfg.setting else None
    cfg_hash = config_hash(cfg.to_dict(), [cfg.setting])
    done = folder.finished_record(cfg_hash) if resume and not overwrite else None
    if done is not None:
        log(f"{out} already holds this finished run; nothing to do")
        return done
    folder.check_claim(cfg_hash, resume, overwrite)
    created = not folder.final.exists()
    if overwrite:
        folder.stage_overwrite()
    try:
        return _train(cfg, folder, cfg_hash, setting, resume, overwrite, log, started)
    except Exception:
        if is_main_rank():
            folder.abandon(created)
        raise


def load_setting_for(cfg: TrainConfig, allow_other_model: bool, log) -> FanLoRASetting:
    """``cfg.setting``, refused when it was made for another model than ``cfg.model``."""
    setting = FanLoRASetting.load(cfg.setting)
    made = MadeFor(f"the setting {cfg.setting}", setting.model, setting.layout.to_dict())
    layout = layout_from_config(load_config(cfg.model))
    check_made_for(made, cfg.model, layout, allow_other_model, log)
    return setting


def _train(cfg, folder, cfg_hash, setting, resume, overwrite, log, started) -> dict:
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
        "model_layout": layout.to_dict(),  # what the adapter was made for (provenance)
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
    trainer.begin_sitting()
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
            wall_time_s=time.time() - started,  # this sitting's
            sittings=state.sittings,
            rank_weight_checksums=checksums,
        )
        folder.write_run(record)
        folder.publish()
    trainer.acc.wait_for_everyone()
    return record
