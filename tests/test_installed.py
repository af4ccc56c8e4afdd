"""The environment check CI runs before the tests (tests/installed.py) catches a wheel
that overwrote another's files, a file changed after install, a distribution at another
version than the lock's, and one the lock names but nobody installed."""
from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import installed

ROOT = Path(__file__).resolve().parent.parent


def record_line(site: Path, relative: str) -> str:
    digest = hashlib.sha256((site / relative).read_bytes()).digest()
    value = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{relative},sha256={value},{(site / relative).stat().st_size}"


def install(site: Path, name: str, version: str, files: dict[str, str]) -> None:
    """What pip leaves of a wheel: its files, then a dist-info with METADATA and RECORD."""
    info = f"{name}-{version}.dist-info"
    for relative, text in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    (site / info).mkdir(parents=True)
    (site / info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                          f"Version: {version}\n")
    lines = [record_line(site, r) for r in [*files, f"{info}/METADATA"]]
    (site / info / "RECORD").write_text("\n".join(lines + [f"{info}/RECORD,,"]) + "\n")


def lock(tmp_path: Path, pins: dict[str, str]) -> Path:
    path = tmp_path / "lock.txt"
    path.write_text("".join(f"{n}=={v} \\\n    --hash=sha256:00\n    # via -r x.in\n"
                            for n, v in pins.items()))
    return path


def test_an_intact_environment_at_the_locked_versions_passes(tmp_path):
    site = tmp_path / "site"
    install(site, "alpha", "1.0", {"alpha/__init__.py": "A = 1\n"})
    install(site, "beta_pkg", "2.0", {"beta/__init__.py": "B = 2\n"})
    assert installed.problems(lock(tmp_path, {"alpha": "1.0", "beta-pkg": "2.0"}),
                              [str(site)]) == []


def test_an_overwriting_wheel_a_changed_file_and_version_drift_are_named(tmp_path):
    site = tmp_path / "site"
    install(site, "robustbench", "1.1.1", {"robustbench/utils.py": "def download(): ...\n",
                                           "robustbench/data.py": "DATA = 1\n"})
    # a second wheel ships its own old copy of robustbench/, installed after it
    install(site, "torchattacks", "3.5.1", {"torchattacks/__init__.py": "",
                                            "robustbench/utils.py": "old = True\n"})
    (site / "robustbench" / "data.py").write_text("DATA = 2\n")
    found = installed.problems(lock(tmp_path, {"robustbench": "1.1.1", "torchattacks": "3.5.0",
                                               "timm": "1.0.9"}), [str(site)])
    assert "robustbench: robustbench/utils.py is not the file its wheel shipped" in found
    assert "robustbench: robustbench/data.py is not the file its wheel shipped" in found
    assert "robustbench/utils.py is shipped by both robustbench and torchattacks" in found
    assert "torchattacks: 3.5.1 installed, 3.5.0 locked" in found
    assert "timm: locked at 1.0.9, not installed" in found
    assert len(found) == 5


def test_the_lock_pins_every_requirement_with_hashes():
    """Every line of the lock is name==version with hashes (pip then refuses anything
    unpinned), and it holds what the README's commands and the tests import."""
    text = (ROOT / "requirements-lock.txt").read_text()
    pins = installed.locked_versions(ROOT / "requirements-lock.txt")
    assert text.count("==") == len(pins) and text.count("--hash=sha256:") >= len(pins)
    for name in ("torch", "torchvision", "streamlit", "robustbench", "pyautoattack", "ray",
                 "playwright", "pytest", "setuptools"):
        assert name in pins, name
    assert "torchattacks" not in pins     # it ships a copy of robustbench/ that overwrites it


def test_the_command_line_names_each_problem_and_fails(tmp_path):
    site = tmp_path / "site"
    install(site, "alpha", "1.0", {"alpha/__init__.py": ""})
    done = subprocess.run([sys.executable, "tests/installed.py",
                           str(lock(tmp_path, {"alpha": "2.0"})), str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == "alpha: 1.0 installed, 2.0 locked\n"


def test_ci_runs_the_readmes_test_command_in_a_new_virtual_environment():
    readme = (ROOT / "README.md").read_text().splitlines()
    run = (ROOT / ".ci" / "run").read_text()
    at = next(i for i, line in enumerate(readme) if line.startswith("Run the tests"))
    command = next(line.strip() for line in readme[at + 1:] if line.startswith("    "))
    assert "requirements-lock.txt" in command and "installed.py" in command
    assert command in run.splitlines()
    assert run.index("-m venv") < run.index("activate") < run.index(command)
