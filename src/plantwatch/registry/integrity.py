"""Integrity of stored artifacts: sha256 pinning and a restricted skops load.

A model file is code-adjacent: unpickling an attacker's file runs the attacker's code. Two
defences, both applied before any object is built: (1) the artifact's sha256 must equal the one
plantwatch recorded at registration in its own index (outside the BentoML folder, whose metadata
an attacker who can swap the file can also edit); (2) skops may only construct types from the
modules a DetectorBundle is made of.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from plantwatch.errors import RegistryError

#: Modules whose types a stored model may contain; anything else is refused, never unpickled.
TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ("plantwatch.", "sklearn.", "numpy.", "scipy.", "builtins.")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (bundles can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(folder: Path, expected: dict[str, str], what: str) -> None:
    """Every recorded file exists in ``folder`` with its recorded sha256, else ``RegistryError``."""
    for name, want in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise RegistryError(f"{what}: stored file {name} is missing from {folder}")
        got = sha256_file(path)
        if got != want:
            raise RegistryError(
                f"{what}: integrity check failed, {name} has sha256 {got[:12]}… but {want[:12]}… was "
                "registered (tampered or corrupt); refusing to use it"
            )


def trusted_types(data: bytes, name: str) -> list[str]:
    """The non-default types a skops payload needs, if all come from trusted modules; else refuse."""
    import skops.io as sio

    try:
        needed = sio.get_untrusted_types(data=data)
    except Exception as err:  # skops raises many kinds on a corrupt zip / schema
        raise RegistryError(f"{name}: not a readable skops file ({type(err).__name__}: {err})") from None
    refused = sorted(t for t in needed if not t.startswith(TRUSTED_MODULE_PREFIXES))
    if refused:
        raise RegistryError(
            f"{name}: refusing to load untrusted types {', '.join(refused)} "
            f"(allowed modules: {', '.join(p.rstrip('.') for p in TRUSTED_MODULE_PREFIXES)})"
        )
    return list(needed)


def load_skops(path: Path, expected_sha256: str | None, what: str) -> Any:
    """Read ``path`` once, verify those bytes (hash when given, then types), then build the object.

    Hashing and loading the same in-memory bytes closes the window in which the file could be
    swapped between the check and the load.
    """
    import skops.io as sio

    try:
        data = path.read_bytes()
    except OSError as err:
        raise RegistryError(f"{what}: cannot read {path} ({err.strerror})") from None
    if expected_sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != expected_sha256:
            raise RegistryError(
                f"{what}: integrity check failed, {path.name} has sha256 {got[:12]}… but "
                f"{expected_sha256[:12]}… was registered (tampered or corrupt); refusing to load it"
            )
    trusted = trusted_types(data, path.name)
    try:
        return sio.loads(data, trusted=trusted)
    except Exception as err:
        raise RegistryError(
            f"{what}: {path.name} could not be loaded ({type(err).__name__}: {err})"
        ) from None
