"""`reconciler import`: a spec file written from an existing Vapi account, SOPS-encrypted.

Moving an account in by hand means copying each assistant into YAML without what Vapi owns,
and a name copied wrong makes the next `apply` create a duplicate. This writes the spec from
the live assistants with `spec.adopt: byName`, so that `apply` tags them instead of creating
new ones, and refuses whatever would make that adoption ambiguous or the spec inexact.

Its parser is in `parsers.py`: this module is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.config import Settings

ROLES = ("inbound", "outbound")
STAGE_PREFIX = ".reconciler-"  # spec.writer.TEMP_PREFIX: its temporary files
_PLAIN = object()  # marks a secret-looking leaf kept in plaintext
_MASKED = object()  # marks a leaf Vapi showed masked


class ImportRefused(ReconcilerError):
    """The account cannot be imported as asked; nothing was written."""


def cmd_import(args: argparse.Namespace) -> int:
    """Every check that needs no network runs first, so a typo costs no Vapi call."""
    import re
    import secrets

    from reconciler.config import load_settings
    from reconciler.redact import printable
    from reconciler.spec.models import SLUG_PATTERN

    chosen = {role: str(getattr(args, role)) for role in ROLES if getattr(args, role)}
    if not chosen:
        raise ImportRefused("nothing to import: give --inbound ID, --outbound ID or both")
    if len(set(chosen.values())) < len(chosen):
        raise ImportRefused("--inbound and --outbound name the same assistant")
    slug = str(args.slug)
    if not re.fullmatch(SLUG_PATTERN, slug):
        raise ImportRefused(
            f"--slug {printable(slug, 80)!r}: must match {SLUG_PATTERN} "
            "(lower-case letters, digits and dashes; 2 to 63 characters)"
        )
    org_id = _org_id_arg(args.org_id)
    api_key = _env(args.vapi_key_env, "the Vapi private API key")
    given_secret = (
        _env(args.webhook_secret_env, "the webhook secret") if args.webhook_secret_env else None
    )
    out_dir = Path(args.out)
    target = out_dir / f"{slug}.yaml"
    if (target.exists() or target.is_symlink()) and not args.force:
        raise ImportRefused(f"{target} already exists (--force overwrites it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ImportRefused(f"--out {out_dir}: not a folder")
    _require_sops_config(out_dir)

    settings = load_settings()
    live = _list_account(settings, api_key, [given_secret] if given_secret else [])
    picked = pick_assistants(live, chosen, key_env=str(args.vapi_key_env))
    org_id = _org_id_from_tags(picked, org_id)
    assistants: dict[str, dict[str, Any]] = {}
    header_secrets: set[str] = set()
    warnings: list[str] = []
    for role, assistant in picked.items():
        fields, header_secret, plain = assistant_fields(assistant, role)
        assistants[role] = fields
        if header_secret is not None:
            header_secrets.add(header_secret)
        if plain:
            warnings.append(
                f"warning: assistant {assistant['id']} ({role}): {', '.join(plain)} look(s) "
                "secret and stay in plaintext in the spec; move them out before committing"
            )
    if given_secret is not None:
        webhook_secret, source = given_secret, f"${args.webhook_secret_env}"
    elif len(header_secrets) == 1:
        webhook_secret, source = header_secrets.pop(), "the assistants' x-vapi-secret header"
    elif header_secrets:
        raise ImportRefused(
            "the assistants' x-vapi-secret headers differ and an org has one webhook secret: "
            "pass --webhook-secret-env VAR with the one to keep"
        )
    else:
        webhook_secret, source = secrets.token_urlsafe(32), "generated"
    name = args.name if args.name is not None else slug.replace("-", " ").title()
    doc = spec_document(slug, name, org_id, api_key, webhook_secret, assistants)
    check_document(doc, picked)
    write_encrypted(doc, target, force=bool(args.force))

    for line in warnings:
        print(printable(line), file=sys.stderr)
    shown = ", ".join(
        f"{role} {a['id']} {printable(a['name'], 80)!r}" for role, a in picked.items()
    )
    print(f"wrote {printable(target)}: org {slug} ({org_id}), {shown}; webhook secret: {source}")
    print(
        f"next: reconciler apply {printable(out_dir)} --org {slug} "
        "(adopts these assistants by name and tags them; creates none)"
    )
    return 0


# -- input -------------------------------------------------------------------------------------


def _env(variable: str, what: str) -> str:
    from reconciler.cli.orgnew import env_secret

    return env_secret(variable, what, ImportRefused)


def _org_id_arg(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        from reconciler.redact import printable

        raise ImportRefused(f"--org-id {printable(text, 80)!r}: not a UUID") from None


def _require_sops_config(out_dir: Path) -> None:
    """Fails before any Vapi call when there is no `.sops.yaml` in the output folder or above
    it (the one sops is given), unless SOPS_CONFIG names one."""
    from reconciler.secrets.sops import find_config

    if os.environ.get("SOPS_CONFIG") or find_config(out_dir / "x.yaml") is not None:
        return
    raise ImportRefused(
        f"no .sops.yaml in {out_dir} or any folder above it: sops needs one to know whom to "
        "encrypt the credentials to (see specs/examples/.sops.yaml)"
    )


def _list_account(settings: Settings, api_key: str, secrets: list[str]) -> list[dict[str, Any]]:
    from reconciler.vapi.client import VapiError, VapiReader, http_client

    with http_client(settings.vapi_base_url, timeout_s=settings.vapi_timeout_s) as http:
        try:
            return VapiReader(http, api_key, secrets=secrets).list_assistants()
        except VapiError as exc:
            raise ImportRefused(f"cannot list the Vapi account: {exc}") from None


# -- the document ------------------------------------------------------------------------------


def pick_assistants(
    live: list[dict[str, Any]], chosen: dict[str, str], *, key_env: str = "the key"
) -> dict[str, dict[str, Any]]:
    """The chosen assistants by role. Adoption by name must find exactly each of them, so a
    missing or unnamed one, or another assistant with its name, is refused."""
    by_id = {a["id"]: a for a in live}
    picked: dict[str, dict[str, Any]] = {}
    for role, assistant_id in chosen.items():
        assistant = by_id.get(assistant_id)
        if assistant is None:
            raise ImportRefused(
                f"--{role} {assistant_id}: no such assistant in the account of {key_env} "
                f"({len(live)} assistant(s) listed)"
            )
        name = assistant.get("name")
        if not isinstance(name, str) or not name:
            raise ImportRefused(
                f"assistant {assistant_id} ({role}) has no name, and adoption by name needs "
                "one: name it in Vapi first"
            )
        namesakes = [a["id"] for a in live if a["id"] != assistant_id and a.get("name") == name]
        if namesakes:
            raise ImportRefused(
                f"assistant {assistant_id} ({role}) is named {name!r} like "
                f"{', '.join(namesakes)}: adoption by name would be ambiguous; rename one "
                "in Vapi first"
            )
        picked[role] = assistant
    return picked


def _org_id_from_tags(picked: dict[str, dict[str, Any]], org_id: str | None) -> str:
    """An assistant already tagged by a reconciler keeps its org: its tag's org id is the
    default, and a tag for another org or role is refused (the apply would not adopt it)."""
    from reconciler.engine.model import tag_of

    tags = {role: tag for role, a in picked.items() if (tag := tag_of(a)) is not None}
    if org_id is None:
        tagged_orgs = {tag[0] for tag in tags.values()}
        org_id = tagged_orgs.pop() if len(tagged_orgs) == 1 else str(uuid.uuid4())
    for role, (tag_org, tag_role) in tags.items():
        if (tag_org, tag_role) != (org_id, role):
            raise ImportRefused(
                f"assistant {picked[role]['id']} ({role}) is tagged by a reconciler for org "
                f"{tag_org} as {tag_role}: import it as that org and role, or remove the tag"
            )
    return org_id


def assistant_fields(
    assistant: dict[str, Any], role: str
) -> tuple[dict[str, Any], str | None, list[str]]:
    """The spec fields of a live assistant, the webhook secret found in its `server.headers`
    (None if none, or masked), and the paths of secret-looking values kept in plaintext.

    Dropped: what Vapi owns, top-level nulls, our ownership tag, and `x-vapi-secret` (the
    reconciler sets it from the org's webhook secret). A field the spec does not accept, or
    a value Vapi shows masked (the spec would hold the mask), is refused."""
    from reconciler.engine.desired import DYNAMIC_VAPI_PROVIDERS
    from reconciler.engine.diff import strip_server_owned
    from reconciler.protocol import WEBHOOK_SECRET_HEADER
    from reconciler.redact import looks_masked, mask_tree
    from reconciler.spec.models import RESERVED_METADATA_KEYS, AssistantSpec

    where = f"assistant {assistant['id']} ({role})"
    fields = {k: v for k, v in strip_server_owned(assistant).items() if v is not None}
    unknown = sorted(set(fields) - set(AssistantSpec.model_fields))
    if unknown:
        raise ImportRefused(
            f"{where}: field(s) {', '.join(unknown)} cannot be expressed in the spec "
            "(not fields it accepts)"
        )
    live_credentials = fields.get("credentials")
    if isinstance(live_credentials, list):  # the org's own keys: the reconciler adds them
        others = [
            c
            for c in live_credentials
            if not (isinstance(c, dict) and c.get("provider") in DYNAMIC_VAPI_PROVIDERS)
        ]
        if others:
            fields["credentials"] = others
        else:
            del fields["credentials"]
    metadata = fields.get("metadata")
    if isinstance(metadata, dict):
        kept = {k: v for k, v in metadata.items() if k not in RESERVED_METADATA_KEYS}
        if kept:
            fields["metadata"] = kept
        else:
            del fields["metadata"]
    header_secret: str | None = None
    server = fields.get("server")
    if isinstance(server, dict) and isinstance(server.get("headers"), dict):
        headers = dict(server["headers"])
        for header in [h for h in headers if str(h).lower() == WEBHOOK_SECRET_HEADER]:
            value = headers.pop(header)
            if isinstance(value, str) and value and not looks_masked(value):
                header_secret = value
        server = {k: v for k, v in server.items() if k != "headers"}
        if headers:
            server["headers"] = headers
        fields["server"] = server

    def mark(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return _MASKED if looks_masked(value) else _PLAIN

    marked = _marked_paths(mask_tree(fields, mark))
    masked = [path for path, marker in marked if marker is _MASKED]
    if masked:
        raise ImportRefused(
            f"{where}: {', '.join(masked)}: Vapi shows the value masked, so the spec cannot "
            "hold it (set it again in Vapi, or remove it, and import again)"
        )
    plain = [path for path, marker in marked if marker is _PLAIN]
    ordered = {"name": fields.get("name"), **{k: v for k, v in fields.items() if k != "name"}}
    return ordered, header_secret, plain


def _marked_paths(value: Any, path: str = "") -> list[tuple[str, object]]:
    if value is _PLAIN or value is _MASKED:
        return [(path, value)]
    if isinstance(value, dict):
        return [
            found
            for k, v in value.items()
            for found in _marked_paths(v, f"{path}.{k}" if path else str(k))
        ]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _marked_paths(v, f"{path}[{i}]")]
    return []


def spec_document(
    slug: str,
    name: str,
    org_id: str,
    api_key: str,
    webhook_secret: str,
    assistants: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The spec (plaintext credentials: kept in memory, encrypted by sops from stdin)."""
    return {
        "apiVersion": "reconciler/v1",
        "kind": "Organization",
        "metadata": {"id": org_id, "slug": slug, "name": name},
        "spec": {
            "adopt": "byName",
            "credentials": {"vapi": {"apiKey": api_key, "webhookSecret": webhook_secret}},
            "assistants": {role: assistants[role] for role in ROLES if role in assistants},
        },
    }


def check_document(doc: dict[str, Any], picked: dict[str, dict[str, Any]]) -> None:
    """The spec model's verdict before anything is written; each problem names its field and
    the assistant it came from, never a value."""
    from pydantic import ValidationError

    from reconciler.spec.models import Organization

    try:
        Organization.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False)[:5]:
            loc = [str(part) for part in err["loc"]]
            if loc[:2] == ["spec", "assistants"] and len(loc) > 2 and loc[2] in picked:
                where = f"assistant {picked[loc[2]]['id']} ({loc[2]})"
                field = ".".join(loc[3:]) or "(assistant)"
                problems.append(f"{where}: {field}: {err['msg']}")
            else:
                problems.append(f"{'.'.join(loc) or '(document)'}: {err['msg']}")
        raise ImportRefused(f"the spec would not be valid: {'; '.join(problems)}") from None


# -- writing -----------------------------------------------------------------------------------


def write_encrypted(doc: dict[str, Any], target: Path, *, force: bool) -> None:
    """Writes `doc` to `target` encrypted, or nothing at all: sops encrypts it from memory
    (plaintext never touches the disk), the result is checked as `validate` would check it,
    then put in place atomically (spec.writer)."""
    from reconciler.spec import writer

    exists = target.exists() or target.is_symlink()
    if exists and not force:
        raise ImportRefused(f"{target} already exists (--force overwrites it)")
    ciphertext = writer.encrypt_checked(writer.dump(doc), target, doc)
    try:
        writer.write_atomic(target, ciphertext, replace=exists)
    except writer.SpecWriteError as exc:
        if "already exists" in str(exc):
            raise ImportRefused(f"{target} already exists (--force overwrites it)") from None
        raise
