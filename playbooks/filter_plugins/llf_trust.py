"""Jinja filters that keep the example lab's published secrets off real hosts.

inventories/lab ships a vault whose password (`llf-lab-example`) is printed in its
README, so anyone can read what it holds. A deploy refuses, outside the generated test
hosts, an inventory whose vault files still open with that password and secrets whose
value is one the example published (a vault rekeyed with a new password still holds
them).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

# Published in inventories/lab/README.md: not a secret.
PUBLISHED_VAULT_PASSWORD = "llf-lab-example"
# sha256 of the secret values in inventories/lab/group_vars/all/vault.yml (a unit test
# checks them against that file).
PUBLISHED_SECRET_SHA256 = frozenset({
    "41b73db93651c61d297806e4b8dd1066918e6384e55da2e5ce63aa2867d3d317",  # vault_llf_server_api_key
})
VARS_DIRS = ("group_vars", "host_vars")
INLINE_VAULT = re.compile(r"!vault\s*\|[-+]?\s*\n((?:[ \t]+\S.*\n?)+)")


def _vault_texts(text: str) -> list[str]:
    """The vault payloads of a vars file: the whole file, or each inline `!vault |` value."""
    if text.lstrip().startswith("$ANSIBLE_VAULT;"):
        return [text.strip()]
    return ["\n".join(line.strip() for line in block.splitlines()) for block in INLINE_VAULT.findall(text)]


def _opens_with(payload: str, password: str) -> bool:
    from ansible.parsing.vault import AnsibleVaultError, VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(password.encode()))])
    try:
        vault.decrypt(payload.encode())
    except AnsibleVaultError:
        return False
    return True


def llf_published_vault_files(sources: list[str], password: str = PUBLISHED_VAULT_PASSWORD) -> list[str]:
    """The vars files under the inventories' group_vars/ and host_vars/ that the published password opens."""
    found = []
    bases = dict.fromkeys(Path(source) if Path(source).is_dir() else Path(source).parent for source in sources)
    for base in bases:
        for sub in VARS_DIRS:
            if not (base / sub).is_dir():
                continue
            for path in sorted((base / sub).rglob("*")):
                if not path.is_file() or path.name.startswith("."):
                    continue
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if any(_opens_with(payload, password) for payload in _vault_texts(text)):
                    found.append(str(path))
    return found


def _published(value: Any) -> bool:
    if isinstance(value, dict):  # a named client: {name, key, ...}
        return _published(value.get("key"))
    if isinstance(value, list):
        return any(_published(item) for item in value)
    return isinstance(value, str) and hashlib.sha256(value.encode()).hexdigest() in PUBLISHED_SECRET_SHA256


def llf_published_secrets(secrets: dict[str, Any]) -> list[str]:
    """The names of the secrets (a string, a list of them, or clients with a `key`) the example lab published."""
    return [name for name, value in secrets.items() if _published(value)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "llf_published_vault_files": llf_published_vault_files,
            "llf_published_secrets": llf_published_secrets,
        }
