"""``fanlora serve --setting S --adapter NAME=DIR ...``: vLLM's OpenAI-compatible server
for a setting's adapters, restricted to the setting's packed modules.

Examples::

    fanlora serve --setting runs/demo/3-setting/setting.json \\
        --adapter boolq=runs/demo/4-downstream/boolq/fanlora \\
        --adapter choice=runs/demo/4-downstream/choice/fanlora --port 8000
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "boolq", "prompt": "...", "max_tokens": 16}'

Refused before anything starts: vLLM not installed (``make vllm``), a setting for an
architecture without vLLM names, an adapter with modules outside the deployment or a rank
above ``--max-lora-rank``, a port already in use. A server that fails to start is stopped
(with every process it started) and the end of its log shown. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from fanlora.cli.flags import add_allow_other_model
from fanlora.errors import FanLoRAError
from fanlora.models import resolve_model
from fanlora.select import FanLoRASetting
from fanlora.serve.vllm_export import deployment_for, parse_adapters
from fanlora.serve.vllm_server import (
    VLLMServer,
    check_port_free,
    example_request,
    server_command,
)
from fanlora.utils.devices import native_bf16, resolve_device


def register(sub) -> None:
    p = sub.add_parser("serve", help="vLLM's OpenAI-compatible server for a setting's adapters")
    p.add_argument("--setting", required=True, help="setting JSON the adapters were trained on")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an adapter to serve, requested as model NAME (repeat for several)",
    )
    p.add_argument("--model", help="what vLLM loads (default: the setting's model, resolved)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-loras", type=int, help="adapters in one batch (default: all given)")
    p.add_argument("--max-lora-rank", type=int, help="default: the smallest that fits")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: bfloat16 where the device computes it natively)",
    )
    p.add_argument("--max-model-len", type=int, help="longest prompt + output (vLLM's default)")
    p.add_argument("--startup-timeout", type=float, default=900, help="seconds to wait for it")
    p.add_argument("--log", help="vLLM's log file (default: a file in the temp folder)")
    add_allow_other_model(p)
    p.set_defaults(func=run)


def vllm_args(args) -> list[str]:
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if native_bf16(resolve_device("auto")) else "float32"
    extra = ["--dtype", dtype]
    if args.max_model_len:
        extra += ["--max-model-len", str(args.max_model_len)]
    return extra


def run(args) -> int:
    if not args.adapter:
        raise FanLoRAError("give at least one --adapter NAME=DIR to serve")
    if not 0 < args.port < 65536:
        raise FanLoRAError(f"--port must be 1-65535, got {args.port}")
    setting = FanLoRASetting.load(args.setting)
    adapters = {n: str(Path(d).resolve()) for n, d in parse_adapters(args.adapter).items()}
    model = args.model or str(resolve_model(setting.model))
    deployment = deployment_for(
        setting, adapters, model, args.max_loras, args.max_lora_rank, args.allow_other_model
    )
    check_port_free(args.host, args.port)
    command = server_command(deployment, args.host, args.port, vllm_args(args))
    log = Path(args.log) if args.log else temp_log()
    server = VLLMServer(command, args.host, args.port, log)
    print(f"starting vLLM with {len(deployment.target_modules)} wrapped modules; log: {log}")
    server.start()
    try:
        server.wait_ready(args.startup_timeout, progress=waiting)
        print(f"\nready: {server.url}/v1 serving {', '.join(adapters)} (and the base model)")
        print(example_request(server.url, next(iter(adapters))))
        print("Ctrl-C stops it.", flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        server.stop()
        print("\nstopped vLLM", flush=True)
        return 0
    finally:
        server.stop()  # nothing is left running, whatever happened
    raise FanLoRAError(
        f"vLLM exited with code {server.process.returncode}; the end of its log ({log}):\n"
        f"{server.log_tail()}"
    )


def temp_log() -> Path:
    handle, name = tempfile.mkstemp(prefix="fanlora-vllm-", suffix=".log")
    os.close(handle)
    return Path(name)


def waiting(elapsed: float) -> None:
    print(f"\rwaiting for vLLM to load and compile: {elapsed:4.0f} s", end="", flush=True)
