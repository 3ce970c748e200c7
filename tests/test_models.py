import os

import pytest
import torch

from fanlora.errors import FanLoRAError
from fanlora.models import load_model, resolve_model


def test_bfloat16_preset_is_its_own_folder():
    model, tokenizer = load_model("tiny-random-llama", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert resolve_model("tiny-random-llama", "bfloat16").name == "tiny-random-llama-bfloat16"
    assert tokenizer.pad_token is not None


def test_local_folder_works_and_bad_ones_are_named(tmp_path):
    folder = resolve_model("tiny-random-llama")
    model, _ = load_model(str(folder))
    assert model.config.num_hidden_layers == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(FanLoRAError, match="no config"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(FanLoRAError, match="unknown dtype"):
        resolve_model("tiny-random-llama", "int4")


def test_preset_is_written_once(tmp_path):
    folder = resolve_model("tiny-random-llama")
    stamp = os.stat(folder / "config.json").st_mtime_ns
    assert resolve_model("tiny-random-llama") == folder
    assert os.stat(folder / "config.json").st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
