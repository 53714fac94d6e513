"""A template and its use, for the tests of templates in a specs tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TEMPLATE: dict[str, Any] = {
    "apiVersion": "reconciler/v1",
    "kind": "AssistantTemplate",
    "metadata": {"name": "front-desk", "version": 1},
    "parameters": {
        "practiceName": {"type": "string", "maxLength": 24},
        "voice": {"type": "enum", "values": ["burt", "rachel"], "default": "burt"},
    },
    "assistant": {
        "name": "${practiceName} Front Desk",
        "firstMessage": "Thanks for calling ${practiceName}.",
        "model": {
            "provider": "openai",
            "model": "gpt-4o",
            "messages": [{"role": "system", "content": "You answer for ${practiceName}."}],
        },
        "voice": {"provider": "11labs", "voiceId": "${voice}"},
        "server": {"url": "https://hooks.example.com/vapi", "headers": {"x-api-key": "s3cr3t"}},
    },
}


def template(version: int = 1, **changes: Any) -> dict[str, Any]:
    body = {**TEMPLATE["assistant"], **changes}
    return {**TEMPLATE, "metadata": {"name": "front-desk", "version": version}, "assistant": body}


def uses(ref: str = "front-desk@1", **extra: Any) -> dict[str, Any]:
    return {"template": ref, "with": {"practiceName": "Acme Dental"}, **extra}


def put(root: Path, name: str, doc: dict[str, Any]) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
