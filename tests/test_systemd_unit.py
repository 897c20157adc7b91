"""deploy/altyazi.service: what it promises, and ``systemd-analyze verify`` is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ServerConfig
from tests.conftest import REPO

UNIT = REPO / "deploy" / "altyazi.service"
INSTALLED_PYTHON = "/opt/altyazi/.venv/bin/python"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert m, value
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_unit_promises() -> None:
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["User"] == "altyazi"
    assert one["ExecStart"] == f"{INSTALLED_PYTHON} -m app serve --config /etc/altyazi/config.toml"
    assert one["WorkingDirectory"] == "/opt/altyazi"
    assert one["Restart"] == "on-failure" and one["KillSignal"] == "SIGTERM"
    # systemd must not SIGKILL the drain: the stop timeout outlasts the server's own.
    assert seconds(one["TimeoutStopSec"]) > ServerConfig().shutdown_timeout_s + 5
    assert one["ReadWritePaths"] == "/var/lib/altyazi"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert int(one["LimitNOFILE"]) >= 65536
    assert "AF_UNIX" in one["RestrictAddressFamilies"]  # $NOTIFY_SOCKET is a unix socket
    assert one["SystemCallFilter"] == "@system-service"
    assert one["ProtectProc"] == "invisible" and one["ProcSubset"] == "pid"
    assert one["RemoveIPC"] == "yes" and one["PrivateUsers"] == "yes"
    assert one["ConfigurationDirectory"] == "altyazi"  # /etc/altyazi, where ExecStart's --config points


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing; scripts/setup.sh apt installs Debian's systemd package")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists, and /opt/altyazi is not installed
    # here: check a copy whose only change points ExecStart and WorkingDirectory at this
    # checkout and its venv. Every other line is verified as shipped.
    text = UNIT.read_text()
    assert text.count(INSTALLED_PYTHON) == 1
    local = text.replace(INSTALLED_PYTHON, sys.executable).replace("WorkingDirectory=/opt/altyazi", f"WorkingDirectory={REPO}")
    copy = tmp_path / "altyazi.service"
    copy.write_text(local)
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    # Unknown keys and bad values are only warnings (exit status 0), so the output must be empty too.
    assert proc.returncode == 0 and output == "", output
    # And the shipped file fails for that one reason alone.
    shipped = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    lines = [line for line in (shipped.stdout + shipped.stderr).splitlines() if line.strip()]
    assert all(INSTALLED_PYTHON in line for line in lines), lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing; scripts/setup.sh apt installs Debian's systemd package")
def test_systemd_analyze_security_score(tmp_path: Path) -> None:
    # 3.2 before the syscall filter, /proc and IPC hardening, 1.5 with them; lower is better.
    copy = tmp_path / "altyazi.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_PYTHON, sys.executable))
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for altyazi.service: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout[-500:] + proc.stderr[-500:]
    assert float(m.group(1)) <= 2.0, m.group(0)
