"""The README's Python example runs as written, and the API functions do what they say."""

import re
from pathlib import Path

import pytest

from fanlora import api
from fanlora.errors import FanLoRAError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(
        r"<!-- api-example.*?-->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S
    )
    assert match, "the README lost its api-example block"
    return match.group(1)


def test_the_readme_example_runs(tasks_home, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    setting, peft_model = scope["setting"], scope["peft_model"]
    assert (tmp_path / "runs/api-demo/3-setting/setting.json").is_file()
    wrapped = {
        n.removesuffix(".base_layer")
        for n, _ in peft_model.named_modules()
        if n.endswith(".base_layer")
    }
    assert {n.removeprefix("base_model.model.") for n in wrapped} == set(setting.target_modules)
    assert scope["metrics"]["metric"] == "accuracy"
    # a second call finds steps 1-3 done and returns the same setting
    full = {
        "rank": 4,
        "max_steps": 4,
        "batch_size": 4,
        "max_length": 96,
        "eval_every": 2,
        "eval_examples": 8,
    }
    scoring = {"val_examples": 8, "batch_size": 4, "max_length": 96}
    again = api.find_setting(
        "tiny-random-llama", out="runs/api-demo", k_max=2, full_lora=full, scoring=scoring
    )
    assert again.target_modules == setting.target_modules


def test_apply_setting_refuses_a_setting_for_another_model(tmp_path):
    from conftest import build_tiny
    from fanlora.modules import discover_layout
    from fanlora.select import FanLoRASetting

    layout = discover_layout(build_tiny("llama", num_hidden_layers=3))
    setting = FanLoRASetting("x", 2, layout, [["q"]] * 3)
    model, _ = api.load("tiny-random-llama")  # 4 layers
    with pytest.raises(FanLoRAError, match="3 layers"):
        api.apply_setting(model, setting)
