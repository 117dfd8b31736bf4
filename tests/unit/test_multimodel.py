"""Several models on one host: their fit added up, and a service of their own each
(port, cores, files) from llf_server's instance filter."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import REPO, load_script

catalog_filters = load_script(REPO / "roles" / "llf_model" / "filter_plugins" / "llf_catalog.py")
instances = load_script(REPO / "roles" / "llf_server" / "filter_plugins" / "llf_instances.py")

HOST = {"mem_total_gb": 8, "disk_free_gb": {"data": 10}}


def _candidates(**memory: float) -> list[dict[str, Any]]:
    return [{"name": name, "memory_gb": gb, "gpu_memory_gb": gb, "disk_gb": 4, "why": ""}
            for name, gb in memory.items()]


def test_models_that_fit_together_pass() -> None:
    assert catalog_filters.llf_models_fit(_candidates(chat=5, embed=2), ["chat", "embed"], HOST, "vllm-cpu", 1) == ""


def test_the_model_that_overflows_memory_is_named_beside_the_others() -> None:
    why = catalog_filters.llf_models_fit(_candidates(chat=5, embed=2, coder=3), ["chat", "embed", "coder"], HOST,
                                         "vllm-cpu", 1)
    assert why.startswith("coder does not fit beside chat, embed: together they need 10 GiB of memory")
    assert "7 GiB (1 GiB kept free)" in why


def test_disk_adds_up_only_for_models_not_staged() -> None:
    host = {"mem_total_gb": 64, "disk_free_gb": {"data": 6}}
    cands = _candidates(chat=1, embed=1)
    why = catalog_filters.llf_models_fit(cands, ["chat", "embed"], host, "vllm-cpu", 1, [], "/d")
    assert "8 GB of free disk" in why
    assert catalog_filters.llf_models_fit(cands, ["chat", "embed"], host, "vllm-cpu", 1, ["chat"], "/d") == ""


def test_gpu_memory_adds_up_on_the_cuda_engine() -> None:
    host = {"gpu_memory_gb": 6, "disk_free_gb": {"data": 100}}
    assert "GPU memory" in catalog_filters.llf_models_fit(_candidates(a=4, b=4), ["a", "b"], host, "vllm", 1)


def test_a_model_that_does_not_fit_alone_says_why() -> None:
    cands = [{"name": "big", "memory_gb": 99, "disk_gb": 1, "why": "it needs 99 GiB"}]
    assert catalog_filters.llf_models_fit(cands, ["big"], HOST, "vllm-cpu", 1) == "big does not fit: it needs 99 GiB"


def test_model_entry_by_name() -> None:
    assert catalog_filters.llf_model_entry("embed", _candidates(chat=1, embed=2))["memory_gb"] == 2
    with pytest.raises(KeyError):
        catalog_filters.llf_model_entry("nope", _candidates(chat=1))


# --- one service per model ------------------------------------------------------------

CATALOG = ["smollm2", "qwen", "minilm"]
MODELS = [
    {"name": "smollm2", "served_name": "smollm2", "memory_gb": 5, "engine_args": {"max-model-len": 4096},
     "source": {"type": "pypi"}},
    {"name": "minilm", "served_name": "all-minilm", "kind": "embedding", "memory_gb": 2.5, "kv_cache_gb": 1,
     "engine_args": {"max-model-len": 256}, "source": {"type": "pypi"}},
]


def _settings(**over: Any) -> dict[str, Any]:
    settings = {
        "service_name": "llf-vllm", "catalog_names": CATALOG, "cores": 2, "cpu_threads_bind": "all",
        "model_cpus": {}, "model_ports": {}, "port": 8000, "kv_cache_gb": 2, "memory_max": "auto", "mem_total_gb": 24,
        "engine": "vllm-cpu", "config_dir": "/etc/llf", "bin_dir": "/opt/llf/bin",
        "model_paths": {"smollm2": "/models/smollm2/model", "minilm": "/models/minilm/model"},
        "local_host": "127.0.0.1", "main_url": "http://10.0.0.5:8000/v1", "public_host": "10.0.0.5",
    }
    settings.update(over)
    return settings


def test_the_main_model_keeps_the_single_model_names() -> None:
    plan = instances.llf_server_instances(MODELS[:1], _settings(cores=4))
    assert plan["error"] == ""
    (main,) = plan["instances"]
    assert (main["service"], main["port"], main["config"], main["env"], main["script"]) == (
        "llf-vllm", 8000, "/etc/llf/vllm.yaml", "/etc/llf/vllm.env", "/opt/llf/bin/llf-vllm")
    assert main["cpus"] == "0-3" and main["kv_cache_bytes"] == 2 * 1024**3 and main["memory_max"] == "6.3G"
    assert main["url"] == "http://10.0.0.5:8000/v1" and main["kind"] == "chat" and main["max_model_len"] == 4096


def test_each_other_model_gets_its_own_service_port_files_and_cores() -> None:
    main, embed = instances.llf_server_instances(MODELS, _settings())["instances"]
    assert embed["service"] == "llf-vllm-minilm" and embed["port"] == 8003  # 8000 + 1 + catalog position 2
    assert embed["config"] == "/etc/llf/vllm-minilm.yaml" and embed["script"] == "/opt/llf/bin/llf-vllm-minilm"
    assert embed["url"] == "http://10.0.0.5:8003/v1" and embed["local_url"] == "http://127.0.0.1:8003"
    assert (main["cpus"], embed["cpus"]) == ("0", "1")
    assert embed["kv_cache_bytes"] == 1024**3 and embed["kind"] == "embedding"
    assert embed["path"].endswith("/minilm/model")


def test_cores_split_in_equal_contiguous_shares_with_the_rest_to_the_first() -> None:
    assert instances.split_cores(8, 2) == ["0-3", "4-7"]
    assert instances.split_cores(7, 3) == ["0-2", "3-4", "5-6"]
    assert instances.split_cores(1, 1) == ["0"]


def test_ports_and_cores_named_by_the_inventory_win() -> None:
    plan = instances.llf_server_instances(MODELS, _settings(model_ports={"minilm": 8100}, model_cpus={"minilm": "1"}))
    assert plan["instances"][1]["port"] == 8100 and plan["instances"][1]["cpus"] == "1"


def test_more_models_than_cores_are_refused_with_what_to_set() -> None:
    plan = instances.llf_server_instances(MODELS, _settings(cores=1))
    assert "2 models need at least 2 cores" in plan["error"] and "llf_server_model_cpus" in plan["error"]
    # naming every model's cores is the way out
    assert instances.llf_server_instances(MODELS, _settings(cores=1, model_cpus={"smollm2": "0", "minilm": "0"}))[
        "error"] == ""


def test_clashing_or_bad_ports_and_bad_core_lists_are_refused() -> None:
    assert "two models would listen on port 8000" in instances.llf_server_instances(
        MODELS, _settings(model_ports={"minilm": 8000}))["error"]
    bad_port = instances.llf_server_instances(MODELS, _settings(model_ports={"minilm": 80}))
    assert "outside 1024-65535" in bad_port["error"]
    assert "core list" in instances.llf_server_instances(MODELS, _settings(model_cpus={"minilm": "1;reboot"}))["error"]


def test_auto_or_listed_binding_applies_to_the_main_model_only() -> None:
    main, embed = instances.llf_server_instances(MODELS, _settings(cpu_threads_bind="auto"))["instances"]
    assert (main["cpus"], embed["cpus"]) == ("", "")
    main, embed = instances.llf_server_instances(MODELS, _settings(cpu_threads_bind="0-1"))["instances"]
    assert (main["cpus"], embed["cpus"]) == ("0-1", "")


def test_memory_limit_settings() -> None:
    gib = 1024**3
    assert instances.memory_max("infinity", {"memory_gb": 5}, 2 * gib, "vllm-cpu") == ""
    assert instances.memory_max("12G", {"memory_gb": 5}, 2 * gib, "vllm-cpu") == "12G"
    # the catalog's 5 GiB count a 2 GiB KV cache: a 4 GiB one is 2 more
    assert instances.memory_max("auto", {"memory_gb": 5}, 4 * gib, "vllm-cpu") == "8.8G"  # (5 + 2) * 1.25
    assert instances.memory_max("auto", {"memory_gb": 3, "kv_cache_gb": 1}, gib, "vllm-cpu") == "3.8G"
    assert instances.memory_max("auto", {"memory_gb": 5}, 4 * gib, "vllm") == "6.3G"


def test_gpu_memory_is_shared_in_proportion_to_the_models_needs() -> None:
    models = [dict(MODELS[0], gpu_memory_gb=8), dict(MODELS[1], gpu_memory_gb=2)]
    main, embed = instances.llf_server_instances(models, _settings(engine="vllm", gpu_memory_utilization=0.9))[
        "instances"]
    assert (main["gpu_memory_utilization"], embed["gpu_memory_utilization"]) == (0.72, 0.18)
    (alone,) = instances.llf_server_instances(models[:1], _settings(gpu_memory_utilization=0.8))["instances"]
    assert alone["gpu_memory_utilization"] == 0.8
