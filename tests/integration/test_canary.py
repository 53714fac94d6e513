"""The redaction canary (issue 8): every credential field of three orgs holds a unique canary,
and the whole product runs over them with debug logging on: validate, plan (text, json,
markdown, --out), apply (a saved plan, and plain), verify (providers stubbed on 127.0.0.1 that
answer 200 for some credentials and 401/503 for others, echoing every credential they received),
resolve, the webhook resolver (right and wrong secrets), the credential library and
`reconciler audit`, status, keys status, and the failure paths: a spec encrypted to another age
key, a tampered SOPS file, invalid credential values, Vapi answering 4xx/500 with bodies that echo
the org's secrets, providers answering 401, and a wrong master key.

Then no canary may appear in any output (stdout, stderr), log record (message, arguments,
exception text, extras), exception raised in-process, warning, the saved plan file, any file the
runs left in the test's directory, or any column of any table of the database (ciphertext
columns included: they must hold ciphertext, never the plaintext).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import shutil
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pyrage
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.credentials import CredentialNotFound, CredentialStore, CredentialUnavailable
from reconciler.secrets.crypto import MasterKey
from reconciler.state.store import StateWriter
from reconciler.webhooks.resolver import VerificationUnavailable, WebhookResolver
from tests.helpers import (
    Run,
    SpecDir,
    clear_faults,
    edit_assistant,
    fault,
    org_doc,
    served,
    tagged,
)

MARK = "CANARY"  # in every canary: any occurrence of it anywhere is a leak
ORGS = ("alpha", "bravo", "charlie")
FIELDS = {
    "vapi": ("apiKey", "webhookSecret"),
    "twilio": ("accountSid", "authToken"),
    "googleCalendar": ("clientId", "clientSecret", "refreshToken"),
    "resend": ("apiKey",),
    "elevenlabs": ("apiKey",),
}
# What each stubbed provider answers per org: ok (200), reject (401/400 quoting everything it
# received), down (503 quoting everything, retried once, then `unavailable`).
VERDICTS: dict[str, dict[str, str]] = {
    "alpha": {"twilio": "ok", "resend": "ok", "elevenlabs": "ok", "google": "ok", "cal": "ok"},
    "bravo": {
        "twilio": "reject", "resend": "reject", "elevenlabs": "reject", "google": "reject",
        "cal": "ok",
    },
    "charlie": {
        "twilio": "ok", "resend": "down", "elevenlabs": "reject", "google": "ok", "cal": "reject",
    },
}  # fmt: skip


def canary(org: str, name: str) -> str:
    """Printable ASCII, no spaces: valid for every field (the Vapi ones travel in headers)."""
    return f"{MARK}-{org}-{name}-{uuid.uuid4().hex}"


def canary_doc(slug: str) -> dict[str, Any]:
    """An org with every provider, every credential field a canary, and a canary in a custom
    header of its inbound assistant's server (beside the x-vapi-secret the reconciler adds)."""
    creds = {p: {f: canary(slug, f"{p}.{f}") for f in fields} for p, fields in FIELDS.items()}
    vapi = creds.pop("vapi")
    assistants = {
        "inbound": {
            "name": f"{slug} inbound",
            "firstMessage": "Hello!",
            "server": {
                "url": f"https://hooks.example.com/{slug}/webhooks/vapi",
                "headers": {"x-tenant-token": canary(slug, "header")},
            },
        },
        "outbound": {
            "name": f"{slug} outbound",
            "voice": {"provider": "11labs", "voiceId": "burt"},
        },
    }
    return org_doc(
        slug,
        api_key=vapi["apiKey"],
        secret=vapi["webhookSecret"],
        assistants=assistants,
        extra_credentials=creds,
    )


def values_of(doc: dict[str, Any]) -> list[str]:
    """Every canary in a spec document (its credential values and its header canaries)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and MARK in node:
            found.append(node)

    walk(doc["spec"])
    return found


def cred(doc: dict[str, Any], provider: str, name: str) -> str:
    value: str = doc["spec"]["credentials"][provider][name]
    return value


def header_canary(doc: dict[str, Any]) -> str:
    value: str = doc["spec"]["assistants"]["inbound"]["server"]["headers"]["x-tenant-token"]
    return value


# -- the non-Vapi providers, stubbed, echoing everything they receive ------------------------------


class ProviderStub:
    """Twilio, Resend, ElevenLabs and Google (token endpoint, Calendar) in their documented
    shapes. The org is recognised by the canaries it sends; its verdict (VERDICTS) decides the
    answer, and every refusal quotes everything the request carried: the URL, every header
    (Authorization included), the Basic credentials decoded, the form fields."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: list[tuple[str, str]] = []  # (provider, org)
        self.issued: list[str] = []  # Google access tokens handed out (secrets too)

    @staticmethod
    async def received(request: Request) -> tuple[str, dict[str, Any]]:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        basic = ""
        scheme, _, blob = request.headers.get("authorization", "").partition(" ")
        if scheme == "Basic":
            basic = base64.b64decode(blob).decode("utf-8", "replace")
        seen = {
            "url": str(request.url),
            "headers": dict(request.headers),
            "basic": basic,
            "form": form,
            "body": raw,
        }
        # what carries a credential first: a provider's reason is cut short after a while
        carried = [
            blob,  # a bearer token or Basic blob, bare (no scheme before it to mask it by)
            request.headers.get("xi-api-key", ""),
            basic,
            *form.values(),
            request.url.path,
        ]
        text = " ".join(c for c in carried if c)
        text += f" | {request.method} {request.url} headers {dict(request.headers)} form {form}"
        return text, seen

    @staticmethod
    def org_in(text: str) -> str | None:
        return next((org for org in ORGS if f"{MARK}-{org}-" in text), None)

    def app(self) -> Starlette:
        async def handle(request: Request, provider: str) -> Response:
            text, seen = await self.received(request)
            org = self.org_in(text)
            self.calls.append((provider, org or "?"))
            verdict = VERDICTS[org][provider] if org else "reject"
            echo = f"rejected, you sent {text}"  # no `secret-word: ` before it
            if verdict == "down":
                return JSONResponse(
                    {"message": f"upstream connect error: {echo}", "received": seen},
                    503,
                    {"Retry-After": "0"},
                )
            if verdict == "reject":
                return JSONResponse(
                    refusal(provider, echo, seen), 400 if provider == "google" else 401
                )
            return JSONResponse(self.success(provider, request, org or "?", seen))

        def route(path: str, provider: str, method: str) -> Route:
            async def endpoint(request: Request) -> Response:
                return await handle(request, provider)

            return Route(path, endpoint, methods=[method])

        return Starlette(
            routes=[
                route("/twilio/2010-04-01/Accounts/{sid}.json", "twilio", "GET"),
                route("/resend/domains", "resend", "GET"),
                route("/elevenlabs/v1/user", "elevenlabs", "GET"),
                route("/google/token", "google", "POST"),
                route("/google/calendar/v3/users/me/calendarList", "cal", "GET"),
            ]
        )

    def success(self, provider: str, request: Request, org: str, seen: dict[str, Any]) -> Any:
        if provider == "twilio":  # Twilio's account resource carries its SID
            return {"sid": request.path_params["sid"], "status": "active", "received": seen}
        if provider == "resend":
            return {"object": "list", "data": [{"id": "d-1", "name": "example.com"}]}
        if provider == "elevenlabs":  # documented: the user object holds the key
            return {
                "subscription": {"tier": "creator"},
                "xi_api_key": seen["headers"].get("xi-api-key"),
            }
        if provider == "google":
            access = f"ya29.{MARK}-{org}-access-{uuid.uuid4().hex}"
            self.issued.append(access)
            return {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}
        return {"kind": "calendar#calendarList", "items": [{"id": "primary"}]}

    def env(self) -> dict[str, str]:
        return {
            "RECONCILER_TWILIO_BASE_URL": f"{self.url}/twilio",
            "RECONCILER_RESEND_BASE_URL": f"{self.url}/resend",
            "RECONCILER_ELEVENLABS_BASE_URL": f"{self.url}/elevenlabs",
            "RECONCILER_GOOGLE_OAUTH_URL": f"{self.url}/google/token",
            "RECONCILER_GOOGLE_CALENDAR_BASE_URL": f"{self.url}/google/calendar/v3",
        }


def refusal(provider: str, echo: str, seen: dict[str, Any]) -> Any:
    """Each provider's documented error shape, its message quoting what was received."""
    if provider == "twilio":
        return {"code": 20003, "message": echo, "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401, "received": seen}  # fmt: skip
    if provider == "resend":
        return {"statusCode": 401, "name": "validation_error", "message": echo, "received": seen}
    if provider == "elevenlabs":
        return {"detail": {"status": "invalid_api_key", "message": echo}, "received": seen}
    if provider == "google":
        return {"error": "invalid_grant", "error_description": echo, "received": seen}
    return {"error": {"code": 401, "message": echo, "status": "UNAUTHENTICATED"}, "received": seen}


# -- capturing everything -------------------------------------------------------------------


@dataclasses.dataclass
class Captured:
    """Every text the runs produced, labelled by where it came from."""

    texts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    runs: dict[str, Run] = dataclasses.field(default_factory=dict)
    crashes: list[str] = dataclasses.field(default_factory=list)

    def add(self, label: str, text: object) -> None:
        self.texts.append((label, text if isinstance(text, str) else repr(text)))

    def exception(self, label: str, exc: BaseException) -> None:
        self.add(f"{label}: str", str(exc))
        self.add(f"{label}: repr", repr(exc))
        self.add(f"{label}: args", repr(exc.args))
        self.add(f"{label}: attributes", repr(getattr(exc, "__dict__", {})))
        self.add(f"{label}: traceback", "".join(traceback.format_exception(exc)))


def record_texts(record: logging.LogRecord) -> list[str]:
    """A log record as every handler could show it: message, arguments, extras, exception."""
    try:
        message = record.getMessage()
    except Exception:  # a record whose arguments do not fit its format
        message = f"{record.msg!r} % {record.args!r}"
    texts = [message, repr(record.msg), repr(record.args), repr(vars(record))]
    if record.exc_info and record.exc_info[1] is not None:
        texts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        texts.append(record.exc_text)
    if record.stack_info:
        texts.append(record.stack_info)
    return texts


@contextmanager
def debug_everywhere(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every logger at DEBUG (the root, and each logger already made), restored after."""
    caplog.set_level(logging.DEBUG)
    manager = logging.Logger.manager
    saved = {
        name: logger.level
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# -- the test ------------------------------------------------------------------------------------


def test_no_canary_leaks_anywhere(
    cli: Any,
    specs: SpecDir,
    emulator: str,
    pool: ConnectionPool,
    state: StateWriter,
    master_key: MasterKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    recwarn: pytest.WarningsRecorder,
) -> None:
    monkeypatch.setenv("RECONCILER_DEBUG", "1")  # an unexpected exception is raised, not hidden
    with pool.connection() as conn:
        conn.execute("TRUNCATE credential_audit")  # not among the tables the fixture empties
    docs = {slug: canary_doc(slug) for slug in ORGS}
    got = Captured()
    stub = ProviderStub()

    def run(label: str, *argv: str) -> Run:
        got.add(f"{label}: printed before", "".join(capsys.readouterr()))
        try:
            result: Run = cli(*argv)
        except BaseException as exc:  # RECONCILER_DEBUG=1: main() re-raises the unexpected
            if isinstance(exc, KeyboardInterrupt):
                raise
            out, err = capsys.readouterr()
            got.exception(f"{label}: raised", exc)
            got.crashes.append(f"{label}: {type(exc).__name__}")
            result = Run(-1, out, err)
        got.add(f"{label}: stdout", result.out)
        got.add(f"{label}: stderr", result.err)
        got.runs[label] = result
        return result

    with served(stub.app()) as stub_url, debug_everywhere(caplog):
        stub.url = stub_url
        for name, value in stub.env().items():
            monkeypatch.setenv(name, value)
        paths = {slug: specs.write(doc) for slug, doc in docs.items()}
        root = str(specs.root)

        # -- validate, plan in every format, a saved plan, apply it, plan again ----------------
        assert run("validate", "validate", root).code == 0
        for fmt in ("text", "json", "markdown"):
            planned = run(f"plan {fmt}", "plan", root, "--format", fmt, "--detailed-exitcode")
            assert planned.code == 2, planned.out + planned.err
        saved = tmp_path / "saved-plan.json"
        assert run("plan --out", "plan", root, "--out", str(saved)).code == 0
        got.add("saved plan file", saved.read_bytes().decode("utf-8", "replace"))
        applied = run("apply FILE", "apply", str(saved))
        assert applied.code == 0, applied.out + applied.err
        for fmt in ("text", "json", "markdown"):
            again = run(f"plan {fmt} again", "plan", root, "--format", fmt, "--detailed-exitcode")
            assert again.code == 0, again.out + again.err

        # -- Vapi answering a write with a 400 that echoes what it was sent --------------------
        alpha = docs["alpha"]
        alpha_key = cred(alpha, "vapi", "apiKey")
        inbound = next(a for a in tagged(emulator, alpha) if a["name"] == "alpha inbound")
        edit_assistant(  # a header changed by hand in the dashboard: the next apply restores it
            emulator, alpha_key, inbound["id"],
            {"server": {**inbound["server"], "headers": {"x-tenant-token": "changed by hand"}}},
        )  # fmt: skip
        drift = run("plan drift", "plan", root, "--org", "alpha", "--detailed-exitcode")
        assert drift.code == 2, drift.out + drift.err
        echoed = " ".join(values_of(alpha))
        fault(
            emulator, method="PATCH", path="/assistant/{id}", mode="error", status=400, times=None,
            body={
                "message": [f"server.headers invalid: you sent {echoed}",
                            f"x-vapi-secret: {cred(alpha, 'vapi', 'webhookSecret')}"],
                "error": "Bad Request", "statusCode": 400,
                "received": {"server": inbound["server"] | {"headers": {
                    "x-tenant-token": header_canary(alpha),
                    "x-vapi-secret": cred(alpha, "vapi", "webhookSecret")}}},
            },
        )  # fmt: skip
        refused = run("apply, PATCH 400 echo", "apply", root, "--org", "alpha")
        assert refused.code == 1, refused.out + refused.err
        clear_faults(emulator)
        # ... and a create answered 400 the same way (an assistant deleted behind our back)
        httpx.delete(
            f"{emulator}/assistant/{inbound['id']}",
            headers={"Authorization": f"Bearer {alpha_key}"},
        ).raise_for_status()
        fault(
            emulator, method="POST", path="/assistant", mode="error", status=400, times=None,
            body={"message": f"bad assistant {echoed} Authorization: Bearer {alpha_key}",
                  "error": "Bad Request", "statusCode": 400, "apiKey": alpha_key,
                  "server": {"headers": {"x-tenant-token": header_canary(alpha)}}},
        )  # fmt: skip
        refused = run("apply, POST 400 echo", "apply", root, "--org", "alpha")
        assert refused.code == 1, refused.out + refused.err
        clear_faults(emulator)
        healed = run("apply", "apply", root)
        assert healed.code == 0, healed.out + healed.err

        # -- verify: 200 for some, 401/400/503 echoing the credentials for others -------------
        verified = run("verify text", "verify")
        assert verified.code == 1, verified.out + verified.err
        assert run("verify json", "verify", "--format", "json").code == 1
        assert run("verify bravo", "verify", "--org", "bravo", "--provider", "twilio").code == 1
        assert {o for p, o in stub.calls if p == "twilio"} == set(ORGS)

        # -- resolve, the webhook resolver -----------------------------------------------------
        mapped = {
            slug: {a["name"]: a["id"] for a in tagged(emulator, doc)} for slug, doc in docs.items()
        }
        for ids in mapped.values():
            for name, assistant_id in ids.items():
                assert run(f"resolve {name}", "resolve", assistant_id).code == 0
        resolver = WebhookResolver(state, master_key)
        wrong_secret = canary("nobody", "wrong-webhook-secret")
        try:
            for slug, doc in docs.items():
                assistant_id = mapped[slug][f"{slug} inbound"]
                secret = cred(doc, "vapi", "webhookSecret")
                body = json.dumps(
                    {"message": {"type": "status-update", "call": {"assistantId": assistant_id}}}
                ).encode()
                stamp = str(int(time.time()))
                for label, headers in (
                    ("right secret", {"x-vapi-secret": secret}),
                    ("wrong secret", {"x-vapi-secret": wrong_secret}),
                    ("right signature", signed(secret, stamp, body)),
                    ("wrong signature", signed(wrong_secret, stamp, body)),
                    ("right secret, wrong signature",
                     {"x-vapi-secret": secret, **signed(wrong_secret, stamp, body)}),
                ):  # fmt: skip
                    try:
                        resolved = resolver.resolve(headers, body)
                    except Exception as exc:
                        got.exception(f"webhook {slug} {label}", exc)
                        assert label.startswith("wrong") or "wrong" in label, label
                    else:
                        got.add(f"webhook {slug} {label}: result", repr(resolved))
                        got.add(f"webhook {slug} {label}: str", str(resolved))
                        assert label.startswith("right") and "wrong" not in label, label
        finally:
            resolver.close()

        # -- the credential library and its audit ---------------------------------------------
        store = CredentialStore.from_settings(caller="canary-test")
        try:
            for slug, doc in docs.items():
                org_id = doc["metadata"]["id"]
                for getter in ("vapi", "twilio", "google_calendar", "resend", "elevenlabs"):
                    result = getattr(store, getter)(org_id)
                    got.add(f"store {slug} {getter}: repr", repr(result))
                    got.add(f"store {slug} {getter}: str", str(result))
                    got.add(f"store {slug} {getter}: format", f"{result}")
                    for f in dataclasses.fields(result):
                        value = getattr(result, f.name)
                        got.add(f"store {slug} {getter}.{f.name}", f"{value!r} {value!s} {value}")
                    revealed = [
                        getattr(result, f.name).get_secret_value()
                        for f in dataclasses.fields(result)
                        if f.name != "org_id"
                    ]
                    assert all(v.startswith(f"{MARK}-{slug}-") for v in revealed), getter
                got.add(
                    f"store {slug} assistant",
                    repr(store.org_for_assistant(mapped[slug][f"{slug} inbound"])),
                )
            for label, call in (
                ("unknown org", lambda: store.twilio(str(uuid.uuid4()))),
                ("slug as org id", lambda: store.vapi("alpha")),
            ):
                with pytest.raises(CredentialNotFound) as caught:
                    call()
                got.exception(f"store {label}", caught.value)
            got.add("store stats", repr(store.stats()))
        finally:
            store.close()
        for fmt in ("text", "json"):
            audited = run(f"audit {fmt}", "audit", "--format", fmt)
            assert audited.code == 0 and audited.out.strip(), audited.err
        for fmt in ("text", "json"):
            assert run(f"status {fmt}", "status", "--format", fmt).code == 0
        assert run("status alpha", "status", "--org", "alpha", "--format", "json").code == 0
        assert run("keys status", "keys", "status").code == 0

        # -- failure paths ---------------------------------------------------------------------
        # a spec encrypted to another age key
        other = pyrage.x25519.Identity.generate()
        foreign = SpecDir(tmp_path / "foreign", str(other.to_public()))
        docs["delta"] = canary_doc("delta")
        foreign_path = foreign.write(docs["delta"])
        assert run("plan, other age key", "plan", str(foreign_path)).code == 1
        assert run("apply, other age key", "apply", str(foreign_path)).code == 1

        # a tampered SOPS file: one byte of a ciphertext flipped
        tampered = tmp_path / "tampered" / "alpha.yaml"
        tampered.parent.mkdir()
        shutil.copy(specs.root / ".sops.yaml", tampered.parent / ".sops.yaml")
        tampered.write_text(flip_ciphertext_byte(paths["alpha"].read_text()))
        assert run("plan, tampered", "plan", str(tampered)).code == 1
        assert run("apply, tampered", "apply", str(tampered)).code == 1
        assert run("validate, tampered", "validate", str(tampered.parent)).code in (0, 1)

        # credential values the spec refuses (encrypted, so only a decrypting run sees them)
        bad = SpecDir(tmp_path / "badvalues", public_key_of(specs))
        docs["echo"] = canary_doc("echo")
        bad_doc = json.loads(json.dumps(docs["echo"]))
        creds = bad_doc["spec"]["credentials"]
        creds["vapi"]["apiKey"] += " trailing"  # not header-safe
        creds["twilio"]["authTokn"] = canary("echo", "twilio.authTokn")  # an unknown field
        del creds["googleCalendar"]["refreshToken"]
        creds["resend"]["apiKey"] = {"nested": canary("echo", "resend.nested")}  # not a string
        docs["echo-bad"] = bad_doc
        bad_path = bad.write(bad_doc, name="echo")
        assert run("plan, bad values", "plan", str(bad_path)).code == 1
        assert run("apply, bad values", "apply", str(bad_path)).code == 1

        # a plaintext spec: validate refuses it without quoting it
        plain = SpecDir(tmp_path / "plaintext", public_key_of(specs))
        docs["foxtrot"] = canary_doc("foxtrot")
        plain_path = plain.write(docs["foxtrot"], encrypt=False)
        assert run("validate, plaintext", "validate", str(plain.root)).code == 1
        assert run("plan, plaintext", "plan", str(plain_path)).code == 1

        # Vapi answering 500 with a body that echoes the org's secrets, to every call
        fault(
            emulator, method="GET", path="/assistant", mode="error", status=500, times=None,
            body={"message": f"Internal server error for key {alpha_key}, assistant header"
                             f" {header_canary(alpha)}, org secrets {echoed}",
                  "statusCode": 500, "authorization": f"Bearer {alpha_key}",
                  "webhookSecret": cred(alpha, "vapi", "webhookSecret"),
                  "detail": f"rejected {alpha_key} {cred(alpha, 'vapi', 'webhookSecret')}"
                            f" token={alpha_key}"},
        )  # fmt: skip
        for fmt in ("text", "json", "markdown"):
            failed = run(f"plan, Vapi 500 {fmt}", "plan", root, "--org", "alpha", "--format", fmt)
            assert failed.code == 1, failed.out + failed.err
        assert run("apply, Vapi 500", "apply", root, "--org", "alpha").code == 1
        vapi_down = run("verify, Vapi 500", "verify", "--org", "alpha", "--provider", "vapi")
        assert vapi_down.code == 1, vapi_down.out + vapi_down.err
        assert run("status after Vapi 500", "status", "--format", "json").code == 0
        clear_faults(emulator)

        # a wrong master key
        monkeypatch.setenv("RECONCILER_MASTER_KEY", MasterKey.generate().to_b64())
        run("plan, wrong master key", "plan", root, "--format", "json")
        assert run("verify, wrong master key", "verify").code == 1
        run("keys status, wrong master key", "keys", "status")
        run("resolve, wrong master key", "resolve", mapped["alpha"]["alpha inbound"])
        wrong_store = CredentialStore.from_settings(caller="canary-wrong-key")
        try:
            with pytest.raises(CredentialUnavailable) as unreadable:
                wrong_store.twilio(alpha["metadata"]["id"])
            got.exception("store, wrong master key", unreadable.value)
        finally:
            wrong_store.close()
        wrong_resolver = WebhookResolver(state, MasterKey.generate())
        try:
            body = json.dumps(
                {"message": {"call": {"assistantId": mapped["alpha"]["alpha inbound"]}}}
            ).encode()
            with pytest.raises(VerificationUnavailable) as unavailable:
                wrong_resolver.resolve(
                    {"x-vapi-secret": cred(alpha, "vapi", "webhookSecret")}, body
                )
            got.exception("webhook, wrong master key", unavailable.value)
        finally:
            wrong_resolver.close()
        monkeypatch.setenv("RECONCILER_MASTER_KEY", master_key.to_b64())
        assert run("audit after all", "audit", "--format", "json").code == 0

        got.add("printed outside the runs", "".join(capsys.readouterr()))

    # -- what was captured ---------------------------------------------------------------------
    for i, record in enumerate(caplog.records):
        for text in record_texts(record):
            got.add(f"log #{i} {record.name} {record.levelname}", text)
    got.add("caplog text", caplog.text)
    for w in recwarn.list:
        got.add(f"warning {w.category.__name__}", f"{w.message} {w.filename}:{w.lineno}")
    # files the runs left (the specs aside: assistants are plaintext in git, by design)
    inputs = {*paths.values(), foreign_path, tampered, bad_path, plain_path}
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and path not in inputs and not path.is_symlink():
            got.add(
                f"file {path.relative_to(tmp_path)}", path.read_bytes().decode("utf-8", "replace")
            )

    needles = sorted(
        {v for doc in docs.values() for v in values_of(doc)} | {wrong_secret, *stub.issued}
    )
    needles += [n.rsplit("-", 1)[-1] for n in needles]  # the random part alone
    needles += [  # the Basic credentials as they travel
        base64.b64encode(
            f"{cred(d, 'twilio', 'accountSid')}:{cred(d, 'twilio', 'authToken')}".encode()
        ).decode()
        for d in (docs[s] for s in ORGS)
    ]
    needles.append(MARK)  # last: a canary cut short, or one this list does not know
    leaks = [leak for label, text in got.texts if (leak := found(label, text, needles))]
    leaks += database_leaks(pool, needles)
    assert stub.issued, "Google's token endpoint was never reached"
    crashed = f"\n(runs that raised: {got.crashes})" if got.crashes else ""
    assert not leaks, f"{len(leaks)} leak(s):\n" + "\n".join(leaks[:60]) + crashed
    assert "(sensitive)" in got.runs["verify text"].out  # the echoes came back, masked
    assert len(got.runs) >= 45, sorted(got.runs)  # every run above was made


def signed(secret: str, stamp: str, body: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"x-signature": mac, "x-timestamp": stamp}


def flip_ciphertext_byte(text: str) -> str:
    """The first `ENC[AES256_GCM,data:...]` of a SOPS file with one base64 character changed."""
    start = text.index("ENC[AES256_GCM,data:") + len("ENC[AES256_GCM,data:")
    old = text[start + 2]
    new = "A" if old != "A" else "B"
    return text[: start + 2] + new + text[start + 3 :]


def public_key_of(specs: SpecDir) -> str:
    rules = (specs.root / ".sops.yaml").read_text()
    return rules.split("age:", 1)[1].split()[0]


def found(label: str, text: str, needles: list[str], width: int = 60) -> str | None:
    """`label: 'needle' in ...context...` for the first needle in `text`, or None."""
    for needle in needles:
        at = text.find(needle)
        if at >= 0:
            context = text[max(0, at - width) : at + len(needle) + width].replace("\n", "\\n")
            return f"{label}: {needle!r} in ...{context}..."
    return None


CIPHERTEXT_COLUMNS = {
    ("org_credentials", "encrypted_config"),
    ("org_credentials", "previous_encrypted_config"),
}


def database_leaks(pool: ConnectionPool, needles: list[str]) -> list[str]:
    """Every column of every table of the current schema, each value as text, searched. The
    ciphertext columns of org_credentials must hold ciphertext: searched like the others."""
    leaks: list[str] = []
    ciphertexts = 0
    with pool.connection() as conn:
        columns = conn.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t"
            "   ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
            " ORDER BY 1, 2"
        ).fetchall()
        assert {t for t, _ in columns} >= {"org_credentials", "credential_audit", "org_runs"}
        for table, column in columns:
            rows = conn.execute(
                sql.SQL("SELECT {}::text FROM {} WHERE {} IS NOT NULL").format(
                    sql.Identifier(column), sql.Identifier(table), sql.Identifier(column)
                )
            ).fetchall()
            for (value,) in rows:
                if (table, column) in CIPHERTEXT_COLUMNS:  # ciphertext, and nothing else
                    assert re.fullmatch(r"v\d+:[\w+/=:.-]+", value), (table, column)
                    ciphertexts += 1
                if leak := found(f"database {table}.{column}", value, needles):
                    leaks.append(leak)
    assert ciphertexts >= 5 * len(ORGS), "no ciphertext stored: nothing was searched"
    return leaks
