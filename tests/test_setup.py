"""scripts/setup.sh's apt step, run against fake dpkg-query / id / apt-get.

The real machine already has the packages, so the install path would never run in a
test; a PATH holding only shims lets us check what it *would* do, as root and not.
"""

from __future__ import annotations

import re

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"


def _apt_packages() -> list[str]:
    """The package names of APT_PACKAGES in scripts/setup.sh, in order."""
    text = SETUP.read_text()
    start = text.index("APT_PACKAGES=(")
    block = text[start : text.index("\n)", start)]
    return [m.split(":")[0] for m in re.findall(r'^\s*"([^"]+)"', block, re.M)]


EXPECTED = _apt_packages()


def _shim(path: Path, body: str) -> None:
    path.write_text("#!" + BASH + "\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def fake_system(tmp_path: Path):
    """A bin dir with fakes; returns a function that runs setup.sh's apt step."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    # setup.sh needs these real tools besides the fakes.
    for tool in ("dirname", "env", "cat"):
        real = shutil.which(tool)
        assert real, tool
        (bin_dir / tool).symlink_to(real)
    _shim(bin_dir / "apt-get", f'echo "DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}} $*" >> {log}')

    def run(*, uid: int = 0, installed: bool = False, commands: tuple[str, ...] = (), args: tuple[str, ...] = ()):
        _shim(bin_dir / "id", f'[[ "$1" == -u ]] && echo {uid}')
        status = "install ok installed" if installed else ""
        _shim(bin_dir / "dpkg-query", f'printf "%s" "{status}"; [[ -n "{status}" ]]')
        for cmd in commands:
            _shim(bin_dir / cmd, "exit 0")
        proc = subprocess.run(
            [BASH, str(SETUP), *args, "apt"],
            env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
        calls = log.read_text().splitlines() if log.exists() else []
        return proc, calls

    return run


def test_root_installs_missing_packages_after_one_update(fake_system) -> None:
    proc, calls = fake_system(uid=0)
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 2
    assert calls[0].endswith("update -qq")
    frontend, *argv = calls[1].split()
    assert frontend == "DEBIAN_FRONTEND=noninteractive"
    assert argv[:4] == ["install", "-y", "-qq", "--no-install-recommends"]
    assert argv[4:] == EXPECTED


def test_not_root_prints_one_line_with_the_command(fake_system) -> None:
    proc, calls = fake_system(uid=1000)
    assert proc.returncode == 1
    assert calls == []
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "sudo apt-get install -y --no-install-recommends " + " ".join(EXPECTED) in lines[0]


def test_nothing_to_do_when_everything_is_installed(fake_system) -> None:
    proc, calls = fake_system(uid=1000, installed=True)
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    assert proc.stderr == ""


def test_a_command_on_path_counts_as_installed(fake_system) -> None:
    proc, calls = fake_system(uid=0, commands=("ffmpeg", "espeak-ng"))
    assert proc.returncode == 0, proc.stderr
    rest = [p for p in EXPECTED if p not in ("ffmpeg", "espeak-ng")]
    assert calls[-1].split()[-len(rest):] == rest
    assert "ffmpeg" not in calls[-1]


def test_dry_run_installs_nothing(fake_system) -> None:
    proc, calls = fake_system(uid=0, args=("--dry-run",))
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    assert "would run: apt-get update" in proc.stderr
    assert "--no-install-recommends " + " ".join(EXPECTED) in proc.stderr


def test_unknown_argument_is_one_line(fake_system) -> None:
    proc = subprocess.run(
        [BASH, str(SETUP), "--bogus"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ci_runs_exactly_make_test() -> None:
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands[-1] == "make test"
