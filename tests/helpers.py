"""Shared test helpers: writing and encrypting spec files with a throwaway age key."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from reconciler.secrets.sops import sops_binary


def org_doc(
    slug: str,
    *,
    org_id: str | None = None,
    api_key: str | None = None,
    secret: str | None = None,
    assistants: dict[str, Any] | None = None,
    extra_credentials: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if assistants is None:
        assistants = {
            "inbound": {"name": f"{slug} inbound"[:40], "firstMessage": "Hello!"},
            "outbound": {
                "name": f"{slug} outbound"[:40],
                "voice": {"provider": "11labs", "voiceId": "burt"},
            },
        }
    return {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": org_id or str(uuid.uuid4()), "slug": slug, "name": slug.title()},
        "spec": {
            "credentials": {
                "vapi": {
                    "apiKey": api_key or f"key-{slug}-{uuid.uuid4().hex[:8]}",
                    "webhookSecret": secret or f"whsec-{slug}",
                },
                **(extra_credentials or {}),
            },
            "assistants": assistants,
        },
    }


class SpecDir:
    """A folder of specs encrypted to one age key, like a user's repository."""

    def __init__(self, root: Path, public_key: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / ".sops.yaml").write_text(
            "creation_rules:\n"
            "  - path_regex: \\.yaml$\n"
            "    encrypted_regex: ^credentials$\n"
            "    mac_only_encrypted: true\n"
            f"    age: {public_key}\n"
        )

    def write(self, doc: dict[str, Any], *, encrypt: bool = True, name: str | None = None) -> Path:
        path = self.root / f"{name or doc['metadata']['slug']}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if encrypt:
            subprocess.run(
                [sops_binary(), "encrypt", "-i", str(path)],
                check=True,
                capture_output=True,
                cwd=self.root,
            )
        return path


def git(cwd: Path, *args: str) -> str:
    """`git ARGS` in `cwd` with a throwaway identity; its stdout, stripped."""
    done = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()
