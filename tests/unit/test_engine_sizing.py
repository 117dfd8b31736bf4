"""llf_server sizes the CPU engine to the model and the host: KV cache, sequences, worker."""

from __future__ import annotations

from typing import Any

from tests.conftest import REPO, load_script

instances = load_script(REPO / "roles" / "llf_server" / "filter_plugins" / "llf_instances.py")

MIB, GIB = 1024**2, 1024**3
# the catalog's entries as llf_model hands them over (models.yml)
SMOLLM2 = {"name": "smollm2", "served_name": "smollm2", "memory_gb": 5,
           "attention": {"layers": 30, "kv_heads": 3, "head_dim": 64},
           "engine_args": {"max-model-len": 4096, "dtype": "bfloat16"}}
MINILM = {"name": "minilm", "served_name": "minilm", "kind": "embedding", "memory_gb": 3, "kv_cache_gb": 1,
          "engine_args": {"max-model-len": 256}}


def plan(models: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    settings = {
        "service_name": "llf-vllm", "catalog_names": ["smollm2", "minilm"], "cores": 2, "cpu_threads_bind": "all",
        "port": 8000, "kv_cache_gb": "auto", "concurrency": "auto", "memory_max": "auto", "engine": "vllm-cpu",
        "mem_total_gb": 24, "memory_reserve_gb": 1, "config_dir": "/etc/llf", "bin_dir": "/opt/llf/bin",
        "model_paths": {"smollm2": "/m/s", "minilm": "/m/e"}, "local_host": "127.0.0.1", "main_url": "u",
        "public_host": "h", **over,
    }
    return instances.llf_server_instances(models, settings)


def test_a_tokens_kv_is_a_key_and_a_value_per_kv_head_and_layer_in_the_caches_dtype() -> None:
    assert instances.kv_bytes_per_token(SMOLLM2) == 2 * 30 * 3 * 64 * 2  # 23040 bytes
    fp8 = dict(SMOLLM2, engine_args={"dtype": "bfloat16", "kv-cache-dtype": "fp8"})
    assert instances.kv_bytes_per_token(fp8) == 2 * 30 * 3 * 64
    assert instances.kv_bytes_per_token(dict(SMOLLM2, engine_args={"dtype": "float32"})) == 2 * 30 * 3 * 64 * 4
    assert instances.kv_bytes_per_token(MINILM) == 0  # no shape in the catalog: not sized


def test_auto_holds_a_whole_context_for_each_of_4_streams_per_core() -> None:
    (server,) = plan([SMOLLM2])["instances"]
    # 23040 bytes x 4096 tokens x 8 streams (2 cores): 720 MiB instead of the 2 GiB it was given by hand
    assert server["kv_cache_bytes"] == 720 * MIB and server["max_num_seqs"] == 8
    assert server["inprocess_worker"] is True
    # systemd's limit follows: the catalog's 5 GiB counted a 2 GiB cache
    assert server["memory_max"] == "4.7G"  # (5 - 2 + 0.7) x 1.25
    (wide,) = plan([SMOLLM2], cores=8)["instances"]
    assert wide["max_num_seqs"] == 32 and wide["kv_cache_bytes"] == 4 * 720 * MIB
    (fixed,) = plan([SMOLLM2], concurrency=3)["instances"]
    assert fixed["max_num_seqs"] == 3 and fixed["kv_cache_bytes"] == 270 * MIB


def test_a_small_host_shrinks_the_cache_and_the_streams_and_refuses_less_than_one_context() -> None:
    # 4.5 GiB less 1 kept free less the model's 3 GiB besides its cache: 512 MiB, 5 contexts of 90 MiB
    tight = plan([SMOLLM2], mem_total_gb=4.5)
    assert tight["error"] == ""
    assert (tight["instances"][0]["kv_cache_bytes"], tight["instances"][0]["max_num_seqs"]) == (512 * MIB, 5)
    # a host whose memory is unknown bounds nothing
    assert plan([SMOLLM2], mem_total_gb=0)["instances"][0]["kv_cache_bytes"] == 720 * MIB
    refused = plan([SMOLLM2], mem_total_gb=4.05)["error"]
    assert refused.startswith("smollm2 needs 0.09 GiB of KV cache for one 4096-token context")
    assert "lower its max-model-len" in refused


def test_gib_by_hand_and_models_without_a_shape_keep_their_catalog_cache() -> None:
    chat, embed = plan([SMOLLM2, MINILM])["instances"]
    assert (chat["kv_cache_bytes"], chat["max_num_seqs"]) == (360 * MIB, 4)  # one core each: 4 streams
    # the embedding model: its catalog cache, vLLM's own batch (one request of many inputs is many sequences)
    assert (embed["kv_cache_bytes"], embed["max_num_seqs"]) == (GIB, 0)
    (by_hand,) = plan([SMOLLM2], kv_cache_gb=1.5)["instances"]
    assert by_hand["kv_cache_bytes"] == 1536 * MIB and by_hand["max_num_seqs"] == 8


def test_gpu_hosts_leave_the_cache_to_vllm_and_the_worker_in_its_process() -> None:
    (server,) = plan([SMOLLM2], engine="vllm")["instances"]
    assert (server["kv_cache_bytes"], server["max_num_seqs"], server["inprocess_worker"]) == (0, 0, False)
    assert server["memory_max"] == "6.3G"
    (separate,) = plan([SMOLLM2], inprocess_worker=False)["instances"]
    assert separate["inprocess_worker"] is False


def test_core_lists_count_their_cores() -> None:
    assert [instances.core_count(c, 16) for c in ("", "0", "0-3", "1,3", "0-1|4-5")] == [16, 1, 4, 2, 4]
