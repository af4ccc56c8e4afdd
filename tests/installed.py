"""Whether this environment is the one the tests were locked against: every distribution
of requirements-lock.txt at its locked version, every file as its wheel shipped it (the
hashes its RECORD lists), and no file claimed by two distributions. pip checks none of
this: a wheel that ships another project's package (torchattacks 3.5.1 ships an old
robustbench/) silently overwrites it.

    python tests/installed.py [LOCK [SITE ...]]    # CI runs it before the tests: the lock,
                                                   # this Python's sys.path
"""
from __future__ import annotations

import base64
import hashlib
import re
import sys
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements-lock.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip-compile lock."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), re.M)
    return {canonical(name): version for name, version in pins}


def record_mismatches(dist: metadata.Distribution) -> list[str]:
    """The files of a distribution that are missing or differ from its RECORD's hash."""
    out = []
    for entry in dist.files or []:
        if entry.hash is None:          # RECORD itself, and files written after install
            continue
        path = Path(dist.locate_file(entry))
        if not path.is_file():
            out.append(f"{entry} is missing")
            continue
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, entry.hash.mode).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != entry.hash.value:
            out.append(f"{entry} is not the file its wheel shipped")
    return out


def problems(lock: Path = LOCK, path: list[str] | None = None) -> list[str]:
    """Every way the distributions installed on `path` (default: sys.path) differ from
    the lock and from their wheels."""
    installed = {canonical(d.metadata["Name"]): d
                 for d in metadata.distributions(**({"path": path} if path else {}))}
    out = []
    for name, version in sorted(locked_versions(lock).items()):
        dist = installed.get(name)
        if dist is None:
            out.append(f"{name}: locked at {version}, not installed")
        elif dist.version != version:
            out.append(f"{name}: {dist.version} installed, {version} locked")
    owners: dict[Path, str] = {}
    for name, dist in sorted(installed.items()):
        out += [f"{name}: {m}" for m in record_mismatches(dist)]
        for entry in dist.files or []:
            path = Path(dist.locate_file(entry)).resolve()
            if path.suffix != ".pyc" and owners.setdefault(path, name) != name:
                out.append(f"{entry} is shipped by both {owners[path]} and {name}")
    return out


if __name__ == "__main__":
    found = problems(Path(sys.argv[1]) if len(sys.argv) > 1 else LOCK, sys.argv[2:] or None)
    print("\n".join(found) or "every locked distribution installed as its wheel shipped it")
    sys.exit(1 if found else 0)
