"""`fanlora serve`: the server's life cycle (ready, Ctrl-C, failure, time-out) and the
refusals, against a stand-in for vLLM's server that answers /health like it.

The stand-in is run by the Python that FANLORA_VLLM_PYTHON names, as vLLM would be; it
records its command line and starts a child process, so the tests can check what fanlora
asked vLLM for and that stopping reaches every process it started. Real vLLM serving real
adapters is tests/test_vllm.py (slow).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model

from conftest import free_port
from fanlora.cli.main import main
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.select import FanLoRASetting
from fanlora.serve.vllm_server import check_port_free

FAKE_SERVER = r"""
import http.server, json, os, subprocess, sys, time
args = sys.argv[1:]
out = os.environ["FAKE_VLLM_DIR"]
json.dump(args, open(os.path.join(out, "argv.json"), "w"))
mode = os.environ.get("FAKE_VLLM_MODE", "ok")
if mode == "fail":
    print("ValueError: boom, this model cannot be loaded", flush=True)
    sys.exit(3)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.path.join(out, "child.pid"), "w").write(str(child.pid))
if mode == "hang":
    time.sleep(600)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
port = int(args[args.index("--port") + 1])
time.sleep(1)  # a server is not ready at once
http.server.HTTPServer((args[args.index("--host") + 1], port), Health).serve_forever()
"""


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """FANLORA_VLLM_PYTHON -> a script running the stand-in; returns its folder."""
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "server.py").write_text(FAKE_SERVER)
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nshift 2\nexec {sys.executable} {folder / "server.py"} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("FANLORA_VLLM_PYTHON", str(python))
    monkeypatch.setenv("FAKE_VLLM_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A setting ({v, down} in every layer) and an adapter trained on it (PEFT folder)."""
    folder = tmp_path_factory.mktemp("deploy")
    base, _ = load_model("tiny-random-llama")
    layout = discover_layout(base)
    setting = FanLoRASetting("tiny-random-llama", 2, layout, [["v", "down"]] * layout.num_layers)
    path = setting.save(folder / "setting.json")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=setting.target_modules)
    get_peft_model(base, config).save_pretrained(folder / "yesno")
    # o_proj lies outside the deployment ({v, down}: qkv_proj and down_proj wrapped); q_proj
    # would not, since vLLM packs it with v in qkv_proj
    wide = LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj", "v_proj"])
    get_peft_model(load_model("tiny-random-llama")[0], wide).save_pretrained(folder / "wide")
    return str(path), str(folder / "yesno"), str(folder / "wide")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of a reaped group counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def serve_args(deployment, port, *extra):
    setting, adapter, _ = deployment
    args = ["serve", "--setting", setting, "--adapter", f"yesno={adapter}", "--port", str(port)]
    return args + list(extra)


def test_serve_waits_for_health_prints_the_url_and_stops_everything_on_ctrl_c(
    fake_vllm, deployment, tmp_path
):
    port = free_port()
    setting, adapter, _ = deployment
    command = [sys.executable, "-m", "fanlora.cli.main", "serve", "--setting", setting]
    command += ["--adapter", f"yesno={adapter}", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any(line.startswith("Ctrl-C") for line in lines):
        line = proc.stdout.readline()
        assert line, f"fanlora serve ended early: {proc.stderr.read()}"
        lines.append(line.strip())
    text = "\n".join(lines)
    assert f"ready: http://127.0.0.1:{port}/v1 serving yesno" in text
    assert f"curl http://127.0.0.1:{port}/v1/completions" in text and '"model": "yesno"' in text
    argv = json.loads((fake_vllm / "argv.json").read_text())
    assert (
        argv[0] == "--model" and argv[1].endswith("tiny-random-llama") and "--enable-lora" in argv
    )
    targets = argv[argv.index("--lora-target-modules") + 1 : argv.index("--lora-modules")]
    assert targets[:2] == ["model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.down_proj"]
    assert f"yesno={Path(adapter).resolve()}" in argv
    child = int((fake_vllm / "child.pid").read_text())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped vLLM" in out
    time.sleep(0.5)
    assert gone(child)  # the server's own children are stopped too
    check_port_free("127.0.0.1", port)  # and nothing listens on the port any more


def test_a_server_that_fails_to_start_is_reported_with_its_log(
    fake_vllm, deployment, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_VLLM_MODE", "fail")
    assert main(serve_args(deployment, free_port())) == 2
    err = capsys.readouterr().err
    assert "vLLM exited with code 3 before it was ready" in err
    assert "boom, this model cannot be loaded" in err


def test_a_server_that_never_answers_is_stopped_after_the_timeout(
    fake_vllm, deployment, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    assert main(serve_args(deployment, free_port(), "--startup-timeout", "3")) == 2
    assert "did not answer" in capsys.readouterr().err
    time.sleep(0.5)
    assert gone(int((fake_vllm / "child.pid").read_text()))


@pytest.mark.timeout(120)
def test_refusals_start_nothing(fake_vllm, deployment, tmp_path, monkeypatch, capsys):
    setting, _, wide = deployment
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(serve_args(deployment, port)) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    outside = ["serve", "--setting", setting, "--adapter", f"wide={wide}"]
    assert main([*outside, "--port", str(free_port())]) == 2
    assert "adapter wide" in capsys.readouterr().err
    assert main(["serve", "--setting", setting, "--port", "8000"]) == 2
    assert "at least one --adapter" in capsys.readouterr().err
    assert not (fake_vllm / "argv.json").exists()  # vLLM never started
    monkeypatch.setenv("FANLORA_VLLM_PYTHON", str(tmp_path / "none" / "python"))
    assert main(serve_args(deployment, free_port())) == 2
    assert "make vllm" in capsys.readouterr().err
