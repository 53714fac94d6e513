"""Specs -> desired state. The only place a spec's plaintext credentials are handled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler.engine.kinds import (
    ASSISTANT,
    PHONE_NUMBER,
    TOOL,
    number_body,
    number_key,
    tool_body,
    tool_key,
)
from reconciler.engine.model import (
    FINGERPRINT_PREFIX,
    DesiredAssistant,
    DesiredCredential,
    DesiredOrg,
    DesiredResource,
    Fingerprint,
    Sensitive,
    ownership_tag,
)
from reconciler.protocol import WEBHOOK_SECRET_HEADER
from reconciler.redact import mask_tree
from reconciler.secrets.crypto import DEFAULT_KEY_ID, Keys, MasterKey, as_ring
from reconciler.spec.models import Organization

# The org's provider keys (`spec.credentials`, by Postgres provider name) that its assistants'
# calls use as Vapi's dynamic credentials (`CreateAssistantDTO.credentials`: "Dynamic
# credentials override existing credentials"), each as the `Create*CredentialDTO` it becomes.
# ElevenLabs only: `CreateElevenLabsCredentialDTO` takes the org's key as it is. The others have
# no DTO that maps cleanly: Vapi's Google Calendar ones take no client secret or refresh token
# (an OAuth authorization id instead; `google` is Gemini's key), Resend has none, and Twilio's
# (`accountSid`, `authToken`) is the telephony account, which the org's numbers carry, not its
# assistants' calls. A provider added here reaches every assistant in the same way.
DYNAMIC_CREDENTIALS: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "elevenlabs": lambda config: {"provider": "11labs", "apiKey": config["apiKey"]},
}
# the Vapi `provider` of each entry above: what `import` leaves out of an assistant's
# `credentials` (Vapi shows them without their key; the reconciler adds the org's own)
DYNAMIC_VAPI_PROVIDERS = frozenset({"11labs"})


def dynamic_credentials(revealed: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The org's provider keys as Vapi dynamic credentials, in `DYNAMIC_CREDENTIALS` order."""
    return [build(revealed[p]) for p, build in DYNAMIC_CREDENTIALS.items() if p in revealed]


def leaf_fingerprint(key: Keys) -> Fingerprint:
    """Keyed digest of one secret leaf, the same for desired and live values: equal values,
    equal fingerprints (an integral float counts as its integer, as JSON numbers do). Under
    the active master key, named by its id unless that is `default`."""
    return _fingerprint_under(*as_ring(key).keys[0])


def _fingerprint_under(kid: str, active: MasterKey) -> Fingerprint:
    prefix = FINGERPRINT_PREFIX if kid == DEFAULT_KEY_ID else f"{FINGERPRINT_PREFIX}{kid}:"

    def fingerprint(value: Any) -> str:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return prefix + active.fingerprint({"v": value})[:32]

    return fingerprint


def desired_org(
    org: Organization, key: Keys, *, source: str = "", fingerprint: Fingerprint | None = None
) -> DesiredOrg:
    org_id = str(org.metadata.id)
    ring = as_ring(key)
    fingerprint = fingerprint or leaf_fingerprint(ring)
    revealed = org.spec.credentials.revealed()
    credentials = {}
    for provider, config in revealed.items():
        by_key = ring.fingerprints(config)
        credentials[provider] = DesiredCredential(
            provider, by_key[ring.active_id], Sensitive(config), by_key
        )
    vapi = revealed.get("vapi")
    secret = vapi["webhookSecret"] if vapi else None
    provider_keys = dynamic_credentials(revealed)
    assistants = {}
    for role, spec in org.spec.assistants.by_role().items():
        body = assistant_body(spec.vapi_fields(), org_id, role, secret, provider_keys)
        # what we last asked for may be recorded under a master key rotated out since
        write_only = {k: v for k, v in body.items() if k in ASSISTANT.write_only}
        under_keys: dict[str, dict[str, Any]] = {
            kid: mask_tree(write_only, _fingerprint_under(kid, k))
            for kid, k in ring.keys[1:]
            if write_only
        }
        stored = mask_tree(body, fingerprint)
        assistants[role] = DesiredAssistant(
            role,
            body,
            stored,
            write_only_by_key=under_keys,
            template=org.templates.get(role),
            overridden=org.overridden.get(role, frozenset()),
        )
    return DesiredOrg(
        org_id=org_id,
        slug=org.metadata.slug,
        name=org.metadata.name,
        credentials=credentials,
        assistants=assistants,
        resources=desired_resources(org, revealed, fingerprint),
        tool_refs={
            role: tuple(spec.tools)
            for role, spec in org.spec.assistants.by_role().items()
            if spec.tools
        },
        outbound_number=org.spec.outbound.phone_number if org.spec.outbound else None,
        vapi_api_key=Sensitive(vapi["apiKey"]) if vapi else None,
        source=source,
        forward_url=org.spec.webhook.forward_url if org.spec.webhook else None,
        adopt_by_name=org.spec.adopt == "byName",
        key_id=ring.active_id,
        key_ids=ring.ids,
        key_check=ring.check_value(),
    )


def desired_resources(
    org: Organization, revealed: dict[str, dict[str, str]], fingerprint: Fingerprint
) -> dict[str, dict[str, DesiredResource]]:
    """The spec's tools and phone numbers, by kind and name (kinds it has none of: absent)."""
    vapi = revealed.get("vapi")
    secret = vapi["webhookSecret"] if vapi else None
    out: dict[str, dict[str, DesiredResource]] = {}
    for name, tool in org.spec.tools.items():
        body = with_secret_header(tool_body(name, tool.vapi_fields()), secret)
        key = tool_key(body) or name
        out.setdefault(TOOL.name, {})[name] = DesiredResource(
            TOOL.name, name, key, body, TOOL.masked(body, fingerprint)
        )
    for number in org.spec.phoneNumbers:
        fields = number.model_dump(mode="json", by_alias=True, exclude_none=True)
        body = number_body(fields, revealed.get("twilio"))
        refs = (("assistantId", "assistant", number.assistant),) if number.assistant else ()
        out.setdefault(PHONE_NUMBER.name, {})[number.key] = DesiredResource(
            PHONE_NUMBER.name,
            number.key,
            number_key(body) or number.key,
            body,
            PHONE_NUMBER.masked(body, fingerprint),
            refs,
        )
    return out


def with_secret_header(body: dict[str, Any], webhook_secret: str | None) -> dict[str, Any]:
    """`body` whose `server` (when it has a url) carries the org's webhook secret as the
    `x-vapi-secret` header, unless the user set that header: the product's webhook endpoint
    verifies what Vapi sends there with the org's secret."""
    server = body.get("server")
    if isinstance(server, dict) and server.get("url") and webhook_secret:
        headers = dict(server.get("headers") or {})
        if not any(h.lower() == WEBHOOK_SECRET_HEADER for h in headers):
            headers[WEBHOOK_SECRET_HEADER] = webhook_secret
        return {**body, "server": {**server, "headers": headers}}
    return body


def assistant_body(
    fields: dict[str, Any],
    org_id: str,
    role: str,
    webhook_secret: str | None,
    provider_keys: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Vapi body: the user's fields, our ownership tag, the org's webhook secret as the
    `x-vapi-secret` header of `server` (so webhooks can be verified without a plaintext secret
    in the spec), and the org's own provider keys (`provider_keys`, see `dynamic_credentials`)
    in `credentials`, so its calls run on the tenant's provider accounts.

    Every assistant of the org carries every provider key, whatever its voice: a key is only
    used where the call needs that provider (the voice, a fallback voice, the transcriber,
    a tool), and an assistant without it would quietly run on Vapi's own account there. An
    entry the user wrote in the assistant's `credentials` for the same `provider` wins: ours
    is not added (the user's entries first, ours after)."""
    body = dict(fields)
    written = {c.get("provider") for c in fields.get("credentials") or [] if isinstance(c, dict)}
    ours = [c for c in provider_keys or [] if c["provider"] not in written]
    if ours:
        body["credentials"] = [*(fields.get("credentials") or []), *ours]
    body["metadata"] = {**(fields.get("metadata") or {}), **ownership_tag(org_id, role)}
    return with_secret_header(body, webhook_secret)
