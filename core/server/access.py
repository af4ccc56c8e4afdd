"""Who may do what on a RobustLens server: the operator (whoever started it) decides,
visitors get what the operator allows and nothing more.

A server bound to loopback (the shipped config) is local: its one user is the operator,
and every capability is on (code-running pickles still need their own confirmation). A
server bound to anything else is shared: there each capability that can harm the
machine is off for visitors unless the operator's environment turns it on. "Local" is
read from the address the server was started with, never from a request.

The operator's settings (environment variables of the server process):

    ROBUSTLENS_ALLOW_PICKLES=1      visitors may load pickles that can run code
    ROBUSTLENS_SERVER_FOLDERS=A:B   folders whose files and image folders visitors may name
    ROBUSTLENS_ALLOW_DOWNLOADS=1    visitors' hub names and "Fetch CIFAR-10" may download,
    ROBUSTLENS_DOWNLOAD_BUDGET_GB   up to this much in all (default 2)
    ROBUSTLENS_VISITOR_RUN_S        the longest run a visitor may start, estimated (120)
    ROBUSTLENS_VISITOR_JOBS         visitors' computations at once, server-wide (1)
    ROBUSTLENS_VISITOR_QUEUE        visitors' computations that may wait for one (4)
    ROBUSTLENS_OPERATOR_KEY         the key of the operator's link (default: made once,
                                    kept in the cache folder; python -m core operator-link)

The operator's own session on a shared server (opened with the operator link) has the
rights of a local one and a compute lane of its own, so no visitor's job delays it.
"""
from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import os
import secrets
import shutil
import threading
from pathlib import Path

from core import data
from core.errors import RobustLensError

OPERATOR_PARAM = "operator"          # the URL parameter of the operator link


class AccessError(RobustLensError):
    """Something this server's operator does not allow visitors; the message says who
    can change that."""


def is_loopback_address(address: str | None) -> bool:
    """Whether a server bound to `address` is reachable from this machine only. An empty
    address binds every interface (Streamlit's default)."""
    if not address:
        return False
    host = address.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(env: dict, name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(env: dict, name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise AccessError(f"{name}={env[name]!r} is not a number") from None


@dataclasses.dataclass(frozen=True)
class Rights:
    """What one session may do. `folders` None: any path on the server."""
    shared: bool = False
    operator: bool = True
    pickles: bool = True
    folders: tuple[Path, ...] | None = None
    downloads: bool = True
    download_budget_bytes: float = float("inf")
    run_limit_s: float = float("inf")

    @property
    def visitor(self) -> bool:
        return self.shared and not self.operator


@dataclasses.dataclass(frozen=True)
class Server:
    """How the server was started and what its operator allows."""
    shared: bool
    allow_pickles: bool = False
    folders: tuple[Path, ...] = ()
    allow_downloads: bool = False
    download_budget_bytes: float = 2 * 2**30
    visitor_run_s: float = 120.0
    visitor_jobs: int = 1
    visitor_queue: int = 4

    @classmethod
    def started(cls, address: str | None, env: dict | None = None) -> "Server":
        """The server bound to `address` (Streamlit's server.address), with the operator's
        settings from `env` (default: this process's environment)."""
        env = os.environ if env is None else env
        folders = tuple(Path(f).expanduser().resolve() for f in
                        env.get("ROBUSTLENS_SERVER_FOLDERS", "").split(os.pathsep) if f.strip())
        return cls(shared=not is_loopback_address(address),
                   allow_pickles=_flag(env, "ROBUSTLENS_ALLOW_PICKLES"), folders=folders,
                   allow_downloads=_flag(env, "ROBUSTLENS_ALLOW_DOWNLOADS"),
                   download_budget_bytes=_number(env, "ROBUSTLENS_DOWNLOAD_BUDGET_GB", 2) * 2**30,
                   visitor_run_s=_number(env, "ROBUSTLENS_VISITOR_RUN_S", 120),
                   visitor_jobs=max(1, int(_number(env, "ROBUSTLENS_VISITOR_JOBS", 1))),
                   visitor_queue=max(0, int(_number(env, "ROBUSTLENS_VISITOR_QUEUE", 4))))

    def rights(self, operator: bool) -> Rights:
        """A session's rights: the operator's (every session of a local server), or a
        visitor's."""
        if not self.shared or operator:
            return Rights(shared=self.shared)
        return Rights(shared=True, operator=False, pickles=self.allow_pickles,
                      folders=self.folders, downloads=self.allow_downloads,
                      download_budget_bytes=self.download_budget_bytes,
                      run_limit_s=self.visitor_run_s)


# ------------------------------------------------------------ the operator's key

def operator_key(env: dict | None = None) -> str:
    """The key of the operator link: ROBUSTLENS_OPERATOR_KEY, else one made once and
    kept (readable by the server's user only) in the cache folder."""
    env = os.environ if env is None else env
    if env.get("ROBUSTLENS_OPERATOR_KEY"):
        return env["ROBUSTLENS_OPERATOR_KEY"]
    path = data.cache_dir() / "operator-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def is_operator_key(given: str | None, env: dict | None = None) -> bool:
    return bool(given) and hmac.compare_digest(str(given), operator_key(env))


def operator_link(base_url: str = "http://localhost:8501", env: dict | None = None) -> str:
    return f"{base_url.rstrip('/')}/?{OPERATOR_PARAM}={operator_key(env)}"


# -------------------------------------------------------------- paths and names

MAX_SPEC = 1024
def _refused_path(rights: Rights) -> AccessError:
    if rights.folders:
        return AccessError("This shared server reads only files in the folders its operator "
                           "allows, and this is not one of them.")
    return AccessError("This shared server reads no files by path; whoever started it can "
                       "allow folders (ROBUSTLENS_SERVER_FOLDERS, see the README).")


def readable_path(spec: str, rights: Rights) -> Path:
    """The file or folder a visitor named, if the operator's folders hold it (after
    following every symlink and '..'); one sentence, the same whether or not it exists,
    if not."""
    text = str(spec).strip()
    if len(text) > MAX_SPEC or "\0" in text or "://" in text or any(
            len(part.encode()) > 255 for part in text.split(os.sep)):   # NAME_MAX
        raise _refused_path(rights) if rights.folders is not None else AccessError(
            f"{text[:80]!r} is not a path this server can read")
    if rights.folders is None:
        return Path(text).expanduser()
    if not rights.folders or text.startswith("~"):
        raise _refused_path(rights)
    try:
        real = Path(os.path.realpath(text))
    except (OSError, ValueError):
        raise _refused_path(rights) from None
    if not any(real == f or real.is_relative_to(f) for f in rights.folders):
        raise _refused_path(rights)
    return real


# ---------------------------------------------------------------------- downloads

class DownloadLedger:
    """What visitors' downloads have added to this server's disk, kept in the cache
    folder so that a restart does not reset the budget."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or data.cache_dir() / "downloads.json"
        self._lock = threading.Lock()

    def spent(self) -> int:
        try:
            return int(sum(json.loads(self.path.read_text()).values()))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0

    def check_room(self, rights: Rights, free_bytes: int | None = None) -> None:
        """Refuses a visitor's download once the budget is spent or the disk is nearly full."""
        if not rights.downloads:
            raise AccessError("Downloads are off on this shared server: only models already "
                              "in its caches load by name. Whoever started it can turn them "
                              "on (ROBUSTLENS_ALLOW_DOWNLOADS=1).")
        free = shutil.disk_usage(data.cache_dir()).free if free_bytes is None else free_bytes
        if self.spent() >= rights.download_budget_bytes or free < 2**30:
            raise AccessError("This shared server's download budget is spent (or its disk is "
                              "nearly full); whoever started it can raise "
                              "ROBUSTLENS_DOWNLOAD_BUDGET_GB.")

    def record(self, what: str, size: int) -> None:
        with self._lock:
            try:
                book = json.loads(self.path.read_text())
            except (OSError, ValueError):
                book = {}
            book[what] = int(size)
            self.path.write_text(json.dumps(book, indent=1))
