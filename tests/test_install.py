"""The lock of tested versions (.ci/constraints.txt) that .ci/install.sh installs from: it pins
every dependency that pyproject.toml declares (with the extras the install uses) at a version that
satisfies pyproject's ranges, and it resolves with the pip that the interpreter bundles — the
pip a user's fresh venv starts with — so a dependency change that breaks resolution fails here."""

from __future__ import annotations

import json
import re
import subprocess
import venv
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "constraints.txt"
EXTRAS = ("dev", "qa")  # what .ci/install.sh installs by default
LOCKED_EXTRAS = (*EXTRAS, "hf")  # what .ci/lock.sh resolves: every extra a user may install


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and re.fullmatch(r"[A-Za-z0-9_.\-]+", name), f"not a '==' pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = _pins()
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue  # e.g. decord outside x86_64: not needed here, so not needed in the lock
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in the lock: run .ci/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}: run .ci/lock.sh"
        )


@pytest.mark.slow
def test_lock_resolves_with_the_interpreters_bundled_pip(tmp_path):
    """A throwaway venv with the bundled pip (no upgrade) resolves lwmkit[dev,qa] against the lock
    without backtracking, and everything it would install is pinned by the lock."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
         "--report", str(report), "-c", str(LOCK), f".[{','.join(EXTRAS)}]"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pins = _pins()
    installed = json.loads(report.read_text())["install"]
    unpinned = [i["metadata"]["name"] for i in installed
                if canonicalize_name(i["metadata"]["name"]) not in pins and i["metadata"]["name"] != "lwmkit"]
    assert not unpinned, f"resolved but not in the lock (run .ci/lock.sh): {unpinned}"
    for item in installed:
        name = canonicalize_name(item["metadata"]["name"])
        if name in pins:
            assert item["metadata"]["version"] == pins[name], name


def test_install_script_is_bash_clean():
    for script in ("install.sh", "lock.sh", "run"):
        proc = subprocess.run(["bash", "-n", str(ROOT / ".ci" / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
