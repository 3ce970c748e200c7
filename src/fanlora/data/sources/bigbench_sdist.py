"""Fetch, verify and extract the BIG-bench 1.0.0 sdist (never installed: it needs TensorFlow).

The sdist comes from PyPI through ``pip download --no-deps --no-binary :all:``. pip 24 and
newer refuse it while preparing metadata ("Distributions from PyPI cannot declare direct URL
dependencies"), so the download runs with a private pip 23.2.1 installed into the cache.
Only the task folders fanlora uses are extracted. Every step writes into a temporary folder
that is renamed into place when complete, so an interrupted prepare leaves nothing
half-written, and a second prepare repairs or skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from fanlora.data.packages import sha256_of
from fanlora.errors import FanLoRAError
from fanlora.paths import fanlora_home

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
DOWNLOAD_PIP = "pip==23.2.1"
MISSING_RELEASE = "No matching distribution found"  # pip's words when the index lacks it
TASKS_PREFIX = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/"
# Task folders used by fanlora's datasets (see fanlora.data.registry).
FOLDERS = (
    "natural_instructions",
    "squad_shifts",
    "semantic_parsing_spider",
    "elementary_math_qa",
    "strategyqa",
    "coqa_conversational_question_answering",
    "cause_and_effect",
    "social_iqa",
    "physics",
    "hindu_knowledge",
    "general_knowledge",
    "misconceptions",
    "truthful_qa",
)


def data_root() -> Path:
    return fanlora_home() / "data"


def extracted_dir() -> Path:
    """Where the extracted task folders live once prepared."""
    return data_root() / f"bigbench-{BIGBENCH_VERSION}"


def download_sdist(dest: Path, log: Callable[[str], None] = print) -> Path:
    """Download the sdist into ``dest`` with a private, pinned pip; return the archive."""
    pip_dir = data_root() / "tools" / "pip-23.2.1"
    if not (pip_dir / "pip").is_dir():
        log(f"installing {DOWNLOAD_PIP} for the download into {pip_dir}")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(pip_dir),
                DOWNLOAD_PIP,
            ],
            "installing the download helper",
        )
    log(f"downloading bigbench=={BIGBENCH_VERSION} (358 MB sdist) with pip download")
    env = {**os.environ, "PYTHONPATH": str(pip_dir)}
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    try:
        _run([*command, f"bigbench=={BIGBENCH_VERSION}", "-d", str(dest)], "pip download", env)
    except FanLoRAError as exc:
        raise FanLoRAError(download_hint(str(exc))) from None
    archive = dest / f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    if not archive.is_file():
        raise FanLoRAError(f"pip download finished but {archive} is missing")
    return archive


def download_hint(message: str) -> str:
    """``message`` (a failed ``pip download``) with what the user can do about it."""
    archive = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
    remedy = f"copy {archive} here and run `fanlora data prepare --archive PATH`"
    if MISSING_RELEASE not in message:
        return f"{message}\n(offline? {remedy})"
    return (
        f"{message}\nthe package index this machine reaches does not hold "
        f"bigbench=={BIGBENCH_VERSION} (pip's line above lists the versions it has): {remedy}, "
        f"from a machine or mirror that has it (358 MB, sha256 {BIGBENCH_SHA256}, verified)."
    )


def _run(cmd: list[str], what: str, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise FanLoRAError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def extract_folders(archive: Path, dest: Path, expected_sha256: str | None) -> None:
    """Verify ``archive`` and extract the used task folders into ``dest`` (not yet in place)."""
    if expected_sha256 is not None:
        actual = sha256_of(archive)
        if actual != expected_sha256:
            raise FanLoRAError(
                f"{archive} has sha256 {actual}, expected {expected_sha256}: the archive is "
                f"truncated or corrupt, or not bigbench-{BIGBENCH_VERSION}.tar.gz; delete it and "
                "run `fanlora data prepare` again, or pass a good copy with --archive"
            )
    wanted = tuple(TASKS_PREFIX + folder + "/" for folder in FOLDERS)
    found = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.startswith(wanted):
                    continue
                if not member.name.endswith(".json"):
                    continue
                relative = member.name[len(TASKS_PREFIX) :]
                found.add(relative.split("/", 1)[0])
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FanLoRAError(f"cannot read {archive}: {exc} (truncated or corrupt archive)") from None
    missing = sorted(set(FOLDERS) - found)
    if missing:
        raise FanLoRAError(f"{archive} lacks the task folders {missing}: not BIG-bench 1.0.0?")


def install_extracted(
    archive: Path | None = None,
    expected_sha256: str | None = BIGBENCH_SHA256,
    log: Callable[[str], None] = print,
) -> Path:
    """Make :func:`extracted_dir` exist and be complete; download when no archive is given."""
    final = extracted_dir()
    if (final / "COMPLETE").is_file():
        return final
    if archive is not None and not Path(archive).is_file():
        raise FanLoRAError(f"--archive {archive}: no such file")
    root = data_root()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a killed prepare
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-bigbench-", dir=root))
    try:
        if archive is None:
            archive = download_sdist(work / "download", log)
        log(f"verifying and extracting {len(FOLDERS)} task folders from {archive.name}")
        extract_folders(archive, work / "tasks", expected_sha256)
        (work / "tasks" / "COMPLETE").write_text(f"sha256 {sha256_of(archive)}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work / "tasks", final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
