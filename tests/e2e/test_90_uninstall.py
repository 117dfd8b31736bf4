"""`make uninstall` leaves nothing behind but the models, and only those until PURGE=1."""

from __future__ import annotations

import pwd
import subprocess
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import MODEL, Deployment, Harness, recap

pytestmark = pytest.mark.e2e

GONE = [
    "/etc/llf",
    "/opt/llf",
    "/var/log/llf",
    "/var/cache/llf",
    "/var/lib/llf/server",
    "/run/llf-vllm-supervisor.sock",
    "/run/llf-vllm-supervisord.pid",
    "/etc/systemd/system/llf-vllm.service",
    "/etc/systemd/system/llf-webui.service",
]


def llf_processes() -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "user:20,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()
            if line.split()[0] in ("llf", "llf-webui", "prometheus") or "/opt/llf/" in line or "/etc/llf/" in line]


def assert_nothing_left(deployment: Deployment) -> None:
    for path in GONE:
        assert not Path(path).exists(), f"{path} is left"
    for user in ("llf", "llf-webui"):
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
    assert llf_processes() == []
    assert not deployment.endpoints_file.exists()
    assert not deployment.venv_link.exists(), "llf_venv/ is left"
    dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "libtcmalloc-minimal4"],
                          capture_output=True, text=True, check=False).stdout
    assert "installed" not in dpkg.split(), "the OS package LLF installed is left"
    # the monitoring of the local deploy (MONITORING=1): Debian's packages, user and data
    for package in ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter"):
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                capture_output=True, text=True, check=False).stdout
        assert "installed" not in status.split(), f"{package} is left"
    with pytest.raises(KeyError):
        pwd.getpwnam("prometheus")
    assert not Path("/var/lib/prometheus").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{deployment.server.root_url}/health", timeout=5)


def test_uninstall_removes_everything_but_the_models(deployment: Deployment, harness: Harness) -> None:
    result = harness.make("uninstall", timeout=900)
    assert result.returncode == 0, result.output[-4000:]
    assert recap(result.output)["failed"] == 0
    assert_nothing_left(deployment)
    assert (Path("/var/lib/llf/models") / MODEL / "llf-lock.json").is_file(), "the model was not kept"
    # Open WebUI's data (accounts, chats, documents; test_16_webui.py made some) is kept too
    assert Path("/var/lib/llf/webui/webui.db").is_file(), "Open WebUI's data was not kept"


def test_second_uninstall_is_a_no_op(deployment: Deployment, harness: Harness) -> None:
    result = harness.make("uninstall", timeout=900)
    assert result.returncode == 0, result.output[-4000:]
    assert "nothing to do" in result.output
    assert_nothing_left(deployment)


def test_purge_removes_the_models_and_changes_nothing_else(
    deployment: Deployment, harness: Harness
) -> None:
    harness.link_venv()  # the venv pytest runs from; uninstall removes the link again
    result = harness.make("uninstall", "PURGE=1", timeout=900)
    assert result.returncode == 0, result.output[-4000:]
    counters = recap(result.output)
    assert counters["failed"] == 0
    assert not Path("/var/lib/llf").exists()
    assert_nothing_left(deployment)
