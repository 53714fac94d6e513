"""`reconciler org new SLUG`: a new spec file, valid and encrypted from the start.

The credentials come from environment variables (`--vapi-key-env VAR`, ...) or a hidden prompt,
stay in memory, and reach sops on stdin: the plaintext never touches the disk, not even in a
temporary file. The file is encrypted by the `.sops.yaml` nearest to it, whatever the working
directory, and checked as `validate` checks it before it is put in place.

Its parser is in `parsers.py`: this module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from reconciler.cli.parsers import ORG_NEW_FIELDS, ORG_NEW_OPTIONAL_PROVIDERS, org_new_dest
from reconciler.errors import ReconcilerError


class OrgNewRefused(ReconcilerError):
    """`org new` cannot write the spec as asked; nothing was written."""


def cmd_org_new(args: argparse.Namespace) -> int:
    import re

    from reconciler.redact import printable
    from reconciler.secrets.sops import find_config
    from reconciler.spec import writer
    from reconciler.spec.models import SLUG_PATTERN

    slug = str(args.slug)
    if not re.fullmatch(SLUG_PATTERN, slug):
        raise OrgNewRefused(
            f"{printable(slug, 80)!r}: a slug must match {SLUG_PATTERN} (lower-case letters, "
            "digits and dashes; 2 to 63 characters)"
        )
    folder = Path(args.path)
    target = folder / f"{slug}.yaml"
    if folder.exists() and not folder.is_dir():
        raise OrgNewRefused(f"--path {printable(folder)}: not a folder")
    if target.exists() or target.is_symlink():
        raise OrgNewRefused(f"{printable(target)} already exists (`reconciler edit` changes it)")
    config = find_config(target)
    if config is None and not os.environ.get("SOPS_CONFIG"):
        raise OrgNewRefused(
            f"no .sops.yaml in {printable(folder)} or any folder above it: run "
            "`reconciler init` first (sops needs one to know whom to encrypt to)"
        )
    org_id = _org_id(args.org_id)
    name = args.name if args.name is not None else slug.replace("-", " ").title()
    credentials, sources = read_credentials(args)
    doc = spec_document(slug, name, org_id, credentials, args.server_url)
    problems = _check(target, doc)
    if problems:
        raise OrgNewRefused(f"{printable(target)}: the spec would not be valid: {problems}")
    writer.write_new(doc, target)
    print(
        f"wrote {printable(target)}: org {slug} ({org_id}), assistants inbound and outbound; "
        f"credentials encrypted ({', '.join(sources)})"
        + (f" with {printable(config)}" if config is not None else "")
    )
    print(f"next: reconciler edit {printable(target)}   # the assistants' prompts and voices")
    print(f"      reconciler plan {printable(folder)}")
    return 0


def _org_id(text: str | None) -> str:
    if text is None:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(text))
    except ValueError:
        from reconciler.redact import printable

        raise OrgNewRefused(f"--org-id {printable(text, 80)!r}: not a UUID") from None


def read_credentials(args: argparse.Namespace) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The credentials by provider, and where each came from (never a value). Vapi's key is
    required; its webhook secret is generated unless given; another provider is included when
    its flag or one of its --*-env flags is given, each field from its variable or a prompt."""
    import secrets

    wanted = {"vapi"} | {
        provider
        for provider in ORG_NEW_OPTIONAL_PROVIDERS
        if getattr(args, f"with_{provider}", False)
        or any(getattr(args, org_new_dest(p, n)) for p, n, _, _ in ORG_NEW_FIELDS if p == provider)
    }
    credentials: dict[str, dict[str, str]] = {}
    sources: list[str] = []
    for provider, name, stem, what in ORG_NEW_FIELDS:
        if provider not in wanted:
            continue
        variable = getattr(args, org_new_dest(provider, name))
        if variable:
            value, source = env_secret(variable, what), f"${variable}"
        elif name == "webhookSecret":
            value, source = secrets.token_urlsafe(32), "generated"
        else:
            value, source = prompt_secret(what, f"--{stem}-env"), "typed"
        credentials.setdefault(provider, {})[name] = value
        sources.append(f"{provider}.{name} {source}")
    return credentials, sources


def env_secret(variable: str, what: str, error: type[ReconcilerError] = OrgNewRefused) -> str:
    """The value of an environment variable that must hold a secret; never shown. Shared
    with `reconciler import`, which refuses with its own `error`."""
    from reconciler.redact import printable

    value = os.environ.get(variable)
    if value is None:
        raise error(f"environment variable {printable(variable, 80)} is not set ({what})")
    if not value.strip():
        raise error(f"environment variable {printable(variable, 80)} is empty ({what})")
    return value


def prompt_secret(what: str, flag: str) -> str:
    """A secret typed at a prompt that does not echo it; refused without a terminal (a prompt
    on a pipe would echo, or read a script's input)."""
    import getpass

    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise OrgNewRefused(f"{what}: no terminal to type it at: give {flag} VAR")
    try:
        value = getpass.getpass(f"{what} (not shown): ", stream=sys.stderr)
    except EOFError:
        raise OrgNewRefused(f"{what}: nothing typed") from None
    if not value.strip():
        raise OrgNewRefused(f"{what}: empty")
    return value


def spec_document(
    slug: str,
    name: str,
    org_id: str,
    credentials: dict[str, dict[str, str]],
    server_url: str | None,
) -> dict[str, Any]:
    """A starting spec: both assistants with a prompt, a model and a voice to edit."""
    from reconciler.spec.models import ASSISTANT_NAME_MAX

    def assistant(label: str, first: str, prompt: str, model: str, voice: str) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": f"{name} {label}"[:ASSISTANT_NAME_MAX].rstrip(),
            "firstMessage": first,
            "model": {
                "provider": "openai",
                "model": model,
                "messages": [{"role": "system", "content": prompt}],
            },
            "voice": {"provider": "11labs", "voiceId": voice},
        }
        if server_url:
            fields["server"] = {"url": server_url}
        return fields

    return {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": org_id, "slug": slug, "name": name},
        "spec": {
            "credentials": credentials,
            "assistants": {
                "inbound": assistant(
                    "Receptionist",
                    f"Thanks for calling {name}, how can I help?",
                    f"You are the friendly receptionist of {name}. Answer questions, and book, "
                    "move and cancel appointments. Be brief.",
                    "gpt-4o",
                    "burt",
                ),
                "outbound": assistant(
                    "Reminders",
                    f"Hi, this is {name} calling about your appointment.",
                    f"You call the customers of {name} to confirm their appointments. Be "
                    "brief and polite; offer to move the appointment if needed.",
                    "gpt-4o-mini",
                    "sarah",
                ),
            },
        },
    }


def _check(target: Path, doc: dict[str, Any]) -> str:
    """The model's verdict on the plaintext document, as one line of field paths and
    messages (never a value); empty when valid."""
    from reconciler.spec import loader

    problems = loader.check_decrypted(target, doc)
    return "; ".join(f"{p.field or '(document)'}: {p.message}" for p in problems[:5])
