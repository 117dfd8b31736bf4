"""The server's shell-sourced environment file, rendered by Ansible and read by sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

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


def render(tmp_path: Path, variables: dict, template: str = "vllm.env") -> Path:
    dest = tmp_path / template
    play = tmp_path / "play.yml"
    play.write_text(PLAYBOOK.format(src=REPO / f"roles/llf_server/templates/{template}.j2", dest=dest))
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


def _plan(cores: int, bind: str, kv_cache_gb: int | str, engine: str = "vllm-cpu") -> list[dict]:
    """The host's services as llf_server's preflight works them out (one model)."""
    model = {"name": "m", "served_name": "m", "memory_gb": 1, "source": {"type": "pypi"},
             "attention": {"layers": 30, "kv_heads": 3, "head_dim": 64}, "engine_args": {"max-model-len": 4096}}
    return instances.llf_server_instances([model], {
        "service_name": "llf-vllm", "catalog_names": ["m"], "cores": cores, "cpu_threads_bind": bind,
        "port": 8000, "kv_cache_gb": kv_cache_gb, "memory_max": "auto", "engine": engine, "mem_total_gb": 8,
        "inprocess_worker": False,
        "config_dir": "/etc/llf", "bin_dir": "/opt/llf/bin", "model_paths": {"m": "/m"}, "local_host": "127.0.0.1",
        "main_url": "u", "public_host": "h",
    })["instances"]


def test_every_value_reaches_the_server_unchanged(tmp_path: Path) -> None:
    env = render(tmp_path, {
        "llf_server_state_dir": "/var/lib/llf/server",
        "llf_server_compile_cache": True,
        "llf_engine_selected": "vllm-cpu",
        "llf_server_models": [{"main": True, "cpus": "0-1|2-3", "inprocess_worker": True}],
        "__llf_server_preload": {"results": [
            {"item": "/usr/lib/libtcmalloc_minimal.so.4", "stat": {"exists": True}},
            {"item": "/opt/e/lib/libiomp5.so", "stat": {"exists": False}},
        ]},
        "llf_server_extra_env": {"LLF_NOTE": "a value; with $HOME, `quotes` and 'apostrophes' | pipes"},
        "llf_server_onednn_cache": 0,
    })
    # a | in the thread binding once made the start script exit 127
    assert sourced(env, "VLLM_CPU_OMP_THREADS_BIND") == "0-1|2-3"
    assert sourced(env, "LLF_NOTE") == "a value; with $HOME, `quotes` and 'apostrophes' | pipes"
    # the compile cache is kept across restarts in the state directory, not in a private /tmp
    assert sourced(env, "VLLM_USE_AOT_COMPILE") == "0"
    assert sourced(env, "TORCHINDUCTOR_CACHE_DIR") == "/var/lib/llf/server/cache/inductor"
    # the worker inside the engine core's process; the KV cache is a server argument, not this legacy variable
    assert sourced(env, "VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and sourced(env, "KMP_BLOCKTIME") == "5"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env.read_text()
    # only the preload libraries that exist, and tcmalloc gives freed pages back
    assert sourced(env, "LD_PRELOAD") == "/usr/lib/libtcmalloc_minimal.so.4"
    assert sourced(env, "TCMALLOC_AGGRESSIVE_DECOMMIT") == "1"
    # no oneDNN kernels kept beyond vLLM's own (the server's growth per batch size)
    assert sourced(env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY") == "0"


def test_all_cores_and_no_compile_cache(tmp_path: Path) -> None:
    env = render(tmp_path, {
        "llf_server_state_dir": "/srv/llf",
        "llf_server_compile_cache": False,
        "llf_engine_selected": "vllm-cpu",
        "llf_server_models": _plan(cores=2, bind="all", kv_cache_gb=1),
        "llf_server_extra_env": {},
        "llf_server_onednn_cache": "default",
    })
    assert sourced(env, "VLLM_CPU_OMP_THREADS_BIND") == "0-1"
    assert "VLLM_USE_AOT_COMPILE" not in env.read_text()
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in env.read_text()  # llf_server_inprocess_worker: false
    assert "LD_PRELOAD" not in env.read_text() and "TCMALLOC" not in env.read_text()
    assert sourced(env, "HOME") == "/srv/llf"
    assert "ONEDNN" not in env.read_text()  # llf_server_onednn_cache: default leaves oneDNN's own


def _options(tmp_path: Path, engine: str) -> dict:
    config = render(tmp_path, {
        "llf_engine_selected": engine,
        "llf_server_models": _plan(cores=2, bind="all", kv_cache_gb="auto", engine=engine),
        "llf_host": {"gpus": []}, "llf_server_host": "127.0.0.1", "llf_server_shutdown_timeout": 30,
        "llf_server_enforce_eager": False, "llf_server_gpu_memory_utilization": 0.9, "llf_server_extra_args": {},
    }, template="vllm.yaml")
    return yaml.safe_load(config.read_text())


def test_the_cpu_engine_gets_its_sized_kv_cache_and_streams_as_server_options(tmp_path: Path) -> None:
    options = _options(tmp_path, "vllm-cpu")
    # 23040 bytes per token x 4096 tokens x 8 streams (4 per core)
    assert options["kv-cache-memory-bytes"] == 754974720 and options["max-num-seqs"] == 8
    assert options["max-model-len"] == 4096 and "gpu-memory-utilization" not in options


def test_a_gpu_engine_leaves_the_kv_cache_to_vllm(tmp_path: Path) -> None:
    options = _options(tmp_path, "vllm")
    assert "kv-cache-memory-bytes" not in options and "max-num-seqs" not in options
    assert options["gpu-memory-utilization"] == 0.9
