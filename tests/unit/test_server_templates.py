"""The server's shell-sourced environment file, rendered by Ansible and read by sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, load_script

instances = load_script(REPO / "roles" / "llf_server" / "filter_plugins" / "llf_instances.py")

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.template:
        src: {src}
        dest: {dest}
        mode: "0644"
"""


def render(tmp_path: Path, variables: dict) -> Path:
    dest = tmp_path / "vllm.env"
    play = tmp_path / "play.yml"
    play.write_text(PLAYBOOK.format(src=REPO / "roles/llf_server/templates/vllm.env.j2", dest=dest))
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    ansible = Path(sys.executable).parent / "ansible-playbook"
    result = subprocess.run([str(ansible), "-i", "localhost,", str(play), "-e", f"@{extra}"],
                            capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def sourced(path: Path, name: str) -> str:
    """What sh sees for NAME after sourcing the file the way the start script does."""
    result = subprocess.run(["sh", "-c", f'set -eu; set -a; . "$1"; set +a; printf %s "${name}"', "sh", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _plan(cores: int, bind: str, kv_cache_gb: int) -> list[dict]:
    """The host's services as llf_server's preflight works them out (one model)."""
    model = {"name": "m", "served_name": "m", "memory_gb": 1}
    return instances.llf_server_instances([model], {
        "service_name": "llf-vllm", "catalog_names": ["m"], "cores": cores, "cpu_threads_bind": bind,
        "port": 8000, "kv_cache_gb": kv_cache_gb, "memory_max": "auto", "engine": "vllm-cpu",
        "config_dir": "/etc/llf", "bin_dir": "/opt/llf/bin", "model_paths": {"m": "/m"}, "local_host": "127.0.0.1",
        "main_url": "u", "public_host": "h",
    })["instances"]


def test_every_value_reaches_the_server_unchanged(tmp_path: Path) -> None:
    env = render(tmp_path, {
        "llf_server_state_dir": "/var/lib/llf/server",
        "llf_server_compile_cache": True,
        "llf_engine_selected": "vllm-cpu",
        "llf_server_models": [{"main": True, "cpus": "0-1|2-3", "kv_cache_gb": 2}],
        "llf_server_extra_env": {"LLF_NOTE": "a value; with $HOME, `quotes` and 'apostrophes' | pipes"},
    })
    # a | in the thread binding once made the start script exit 127
    assert sourced(env, "VLLM_CPU_OMP_THREADS_BIND") == "0-1|2-3"
    assert sourced(env, "LLF_NOTE") == "a value; with $HOME, `quotes` and 'apostrophes' | pipes"
    # the compile cache is kept across restarts in the state directory, not in a private /tmp
    assert sourced(env, "VLLM_USE_AOT_COMPILE") == "0"
    assert sourced(env, "TORCHINDUCTOR_CACHE_DIR") == "/var/lib/llf/server/cache/inductor"
    assert sourced(env, "VLLM_CPU_KVCACHE_SPACE") == "2"


def test_all_cores_and_no_compile_cache(tmp_path: Path) -> None:
    env = render(tmp_path, {
        "llf_server_state_dir": "/srv/llf",
        "llf_server_compile_cache": False,
        "llf_engine_selected": "vllm-cpu",
        "llf_server_models": _plan(cores=2, bind="all", kv_cache_gb=1),
        "llf_server_extra_env": {},
    })
    assert sourced(env, "VLLM_CPU_OMP_THREADS_BIND") == "0-1"
    assert "VLLM_USE_AOT_COMPILE" not in env.read_text()
    assert sourced(env, "HOME") == "/srv/llf"
