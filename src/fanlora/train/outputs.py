"""The output folder of a training run.

``OUT/adapter_config.json`` + ``OUT/adapter_model.safetensors``: the best adapter, loadable
with plain ``PeftModel.from_pretrained(base, OUT)``. ``OUT/run.json``: config, versions,
parameter count, wall time. ``OUT/metrics.jsonl``: one line per step. ``OUT/checkpoints``:
resumable state. ``OUT/best``: the best adapter while training runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.utils.io import atomic_dir, atomic_path, atomic_write_json, read_json

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def config_hash(config: dict, extra_files: list[str | None] = ()) -> str:
    """sha256 of the config and of the files it points at (a setting, say)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in extra_files:
        if path and not Path(path).is_file():
            raise FanLoRAError(f"file not found: {path}")
        if path:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


class RunFolder:
    """Paths and atomic writes of one run's folder."""

    def __init__(self, path: str | Path):
        self.final = Path(path)
        self._at(self.final)

    def _at(self, path: Path) -> None:
        """Point every path at ``path`` (the final folder, or the staging one of an
        overwrite)."""
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.metrics = path / "metrics.jsonl"
        self.run_json = path / "run.json"

    @property
    def staging(self) -> Path:
        """Where ``--overwrite`` builds the new run beside the old one."""
        return self.final.parent / f".{self.final.name}.overwrite"

    def occupied(self) -> bool:
        return self.final.is_dir() and any(self.final.iterdir())

    def stage_overwrite(self) -> None:
        """With ``--overwrite`` on a folder that holds a run: write the new run into
        :attr:`staging`; the old run is replaced only by :meth:`publish`, once the new one
        has finished (a refused or failed run costs nothing). Every process calls it."""
        if self.occupied():
            self._at(self.staging)

    def finished_record(self, cfg_hash: str) -> dict | None:
        """run.json of a finished run with this config, if the folder holds one."""
        if not self.run_json.is_file():
            return None
        record = read_json(self.run_json, "run.json")
        same = record.get("config_hash") == cfg_hash and record.get("status") == "finished"
        return record if same else None

    def check_claim(self, cfg_hash: str, resume: bool, overwrite: bool) -> None:
        """Refuse a folder that holds a different run unless told to overwrite it; touches
        nothing on disk."""
        run_json = self.final / "run.json"
        existing = read_json(run_json, "run.json") if run_json.is_file() else None
        occupied = self.occupied()
        if overwrite:
            return
        if resume and existing and existing.get("config_hash") != cfg_hash:
            raise FanLoRAError(
                f"{self.final} holds a run with another config "
                f"({existing.get('config_hash')}); cannot resume it with this "
                "one"
            )
        if occupied and not resume:
            raise FanLoRAError(
                f"{self.final} already holds a run: pass --resume to continue it "
                "or --overwrite to replace it"
            )

    def claim(self, cfg_hash: str, resume: bool, overwrite: bool) -> None:
        """:meth:`check_claim`, then create the folder (a fresh staging folder when
        :meth:`stage_overwrite` moved there)."""
        self.check_claim(cfg_hash, resume, overwrite)
        if self.path != self.final:
            shutil.rmtree(self.path, ignore_errors=True)  # an earlier overwrite's leftovers
        self.path.mkdir(parents=True, exist_ok=True)

    def publish(self) -> None:
        """Swap a finished overwrite into place: old run out, new run in, old run removed."""
        if self.path == self.final:
            return
        old = self.final.parent / f".{self.final.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(self.final, old)
        os.replace(self.path, self.final)
        shutil.rmtree(old, ignore_errors=True)
        self._at(self.final)

    def abandon(self, created: bool) -> None:
        """After a failed run: drop the staging folder of an overwrite, or a folder this
        run created and holds no checkpoint to resume from (a failure leaves nothing)."""
        if self.path != self.final or (created and not self.checkpoints.is_dir()):
            shutil.rmtree(self.path, ignore_errors=True)

    def append_metrics(self, record: dict, main: bool = True) -> None:
        if main:
            with open(self.metrics, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
        if self.metrics.is_file():
            lines = self.metrics.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            self.metrics.write_text("".join(line + "\n" for line in kept))

    def save_best(self, peft_model) -> None:
        """``save_pretrained`` into a temporary folder, then swap it in as ``best``."""
        with atomic_dir(self.path / "best") as tmp:
            peft_model.save_pretrained(tmp)

    def publish_best(self) -> None:
        """Copy the best adapter's files to the folder's top level, each atomically."""
        for name in ADAPTER_FILES:
            source = self.path / "best" / name
            if not source.is_file():
                raise FanLoRAError(f"no best adapter was saved in {self.path / 'best'}")
            with atomic_path(self.path / name) as tmp:
                shutil.copyfile(source, tmp)

    def write_run(self, record: dict) -> None:
        atomic_write_json(self.run_json, record)
