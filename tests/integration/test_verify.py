"""`reconciler verify` end to end: specs applied with `reconciler apply` into real Postgres, the
Vapi emulator, and a local stub of the other providers (Twilio, Resend, ElevenLabs, Google's
token endpoint and Calendar API) answering the documented shapes on 127.0.0.1, base URLs set
through the environment. Also the `serve` side: replicas sharing the due rows, and a real
`reconciler serve` process verifying on its schedule.

Canary secrets: every credential value holds CANARY, and none may appear in the output, the
logs or the `verification_error` column."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.providers import verify as verify_module
from reconciler.providers.job import VerifyJob
from reconciler.providers.verify import Endpoints
from reconciler.secrets.crypto import KeyRing, MasterKey
from reconciler.state import verification
from reconciler.state.store import StateError
from tests.helpers import Run, SpecDir, assert_no_traceback, org_doc, served
from tests.helpers.serve import (
    ServeLauncher,
    assert_clean_log,
    run_cli,
    session_env,
    wait_until,
)

PROVIDERS = ["elevenlabs", "google_calendar", "resend", "twilio", "vapi"]


# -- the providers, stubbed as their documentation describes them ------------------------------


@dataclass
class Stub:
    """What each provider answers, chosen per secret by the test (`modes[secret]`):
    ok (default), reject, restricted, flaky (one 429, then ok), down (503), slow, echo (a 401
    whose body quotes the secret and the header it came in)."""

    modes: dict[str, str] = field(default_factory=dict)
    seen: Counter[str] = field(default_factory=Counter)  # requests per secret
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # provider, method, path
    issued: set[str] = field(default_factory=set)  # Google access tokens handed out
    also_echo: dict[str, str] = field(default_factory=dict)  # echo mode: more text to quote
    delay_s: float = 0.0
    inflight: int = 0
    max_inflight: int = 0
    url: str = ""

    def endpoints_env(self) -> dict[str, str]:
        return {
            "RECONCILER_TWILIO_BASE_URL": f"{self.url}/twilio",
            "RECONCILER_RESEND_BASE_URL": f"{self.url}/resend",
            "RECONCILER_ELEVENLABS_BASE_URL": f"{self.url}/elevenlabs",
            "RECONCILER_GOOGLE_OAUTH_URL": f"{self.url}/google/token",
            "RECONCILER_GOOGLE_CALENDAR_BASE_URL": f"{self.url}/google/calendar/v3",
        }

    def endpoints(self, vapi: str) -> Endpoints:
        env = self.endpoints_env()
        return Endpoints(
            vapi=vapi,
            twilio=env["RECONCILER_TWILIO_BASE_URL"],
            resend=env["RECONCILER_RESEND_BASE_URL"],
            elevenlabs=env["RECONCILER_ELEVENLABS_BASE_URL"],
            google_oauth=env["RECONCILER_GOOGLE_OAUTH_URL"],
            google_calendar=env["RECONCILER_GOOGLE_CALENDAR_BASE_URL"],
        )

    async def answer(
        self, provider: str, request: Request, secret: str | None, ok: Any, refusal: Response
    ) -> Response:
        self.calls.append((provider, request.method, request.url.path))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if secret is None:
                return refusal
            self.seen[secret] += 1
            mode = self.modes.get(secret, "ok")
            if mode == "reject":
                return refusal
            if mode == "restricted":
                return JSONResponse(
                    {
                        "statusCode": 401,
                        "name": "restricted_api_key",
                        "message": "This API key is restricted to only send emails",
                    },
                    401,
                )
            if mode == "flaky" and self.seen[secret] == 1:
                return JSONResponse({"message": "Too many requests"}, 429, {"Retry-After": "0"})
            if mode == "down":
                return Response("upstream connect error", 503)
            if mode == "slow":
                await asyncio.sleep(3)
            if mode == "echo":
                header = request.headers.get("authorization") or request.headers.get("xi-api-key")
                more = self.also_echo.get(secret, "")
                return JSONResponse(
                    {
                        "message": f"invalid key {secret} (sent as {header}) {more}",
                        "secret": secret,
                    },
                    401,
                )
            return JSONResponse(ok)
        finally:
            self.inflight -= 1

    def app(self) -> Starlette:
        async def twilio(request: Request) -> Response:
            # https://www.twilio.com/docs/iam/api/account: basic auth AccountSid:AuthToken
            user, token = _basic(request)
            sid = request.path_params["sid"]
            refusal = JSONResponse(
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                401,
            )
            secret = token if user == sid else None
            return await self.answer(
                "twilio", request, secret, {"sid": sid, "status": "active"}, refusal
            )

        async def resend(request: Request) -> Response:
            refusal = JSONResponse(
                {"statusCode": 400, "name": "validation_error", "message": "API key is invalid"},
                400,
            )
            body = {"object": "list", "data": [{"id": "d-1", "name": "example.com"}]}
            return await self.answer("resend", request, _bearer(request), body, refusal)

        async def elevenlabs(request: Request) -> Response:
            refusal = JSONResponse(
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, 401
            )
            key = request.headers.get("xi-api-key")
            body = {"subscription": {"tier": "creator"}, "xi_api_key": key}  # as documented
            return await self.answer("elevenlabs", request, key, body, refusal)

        async def token(request: Request) -> Response:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            refusal = JSONResponse(
                {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                },
                400,
            )
            complete = (
                form.get("grant_type") == "refresh_token"
                and form.get("client_id")
                and form.get("client_secret")
            )
            secret = str(form.get("refresh_token")) if complete else None
            access = f"ya29.stub-{uuid.uuid4().hex}"
            answer = await self.answer(
                "google_token",
                request,
                secret,
                {"access_token": access, "expires_in": 3599, "token_type": "Bearer"},
                refusal,
            )
            if answer.status_code == 200:
                self.issued.add(access)
            return answer

        async def calendars(request: Request) -> Response:
            refusal = JSONResponse(
                {
                    "error": {
                        "code": 401,
                        "message": "Invalid Credentials",
                        "status": "UNAUTHENTICATED",
                    }
                },
                401,
            )
            access = _bearer(request)
            secret = access if access in self.issued else None
            body = {"kind": "calendar#calendarList", "items": [{"id": "primary"}]}
            return await self.answer("google_calendar", request, secret, body, refusal)

        return Starlette(
            routes=[
                Route("/twilio/2010-04-01/Accounts/{sid}.json", twilio, methods=["GET"]),
                Route("/resend/domains", resend, methods=["GET"]),
                Route("/elevenlabs/v1/user", elevenlabs, methods=["GET"]),
                Route("/google/token", token, methods=["POST"]),
                Route("/google/calendar/v3/users/me/calendarList", calendars, methods=["GET"]),
            ]
        )


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value if scheme == "Bearer" and value else None


def _basic(request: Request) -> tuple[str, str]:
    scheme, _, blob = request.headers.get("authorization", "").partition(" ")
    if scheme != "Basic":
        return "", ""
    user, _, password = base64.b64decode(blob).decode().partition(":")
    return user, password


@pytest.fixture
def stub() -> Iterator[Stub]:
    stub = Stub()
    with served(stub.app()) as url:
        stub.url = url
        yield stub


# -- specs with every provider, canary secrets ------------------------------------------------


def full_doc(slug: str) -> dict[str, Any]:
    """An org with all five providers; every secret value holds CANARY and is unique."""
    n = uuid.uuid4().hex[:10]
    return org_doc(
        slug,
        api_key=f"key-{slug}-CANARY{n}",
        secret=f"whsec-{slug}-CANARY{n}",
        extra_credentials={
            "twilio": {"accountSid": f"AC{uuid.uuid4().hex}", "authToken": f"tw-{slug}-CANARY{n}"},
            "resend": {"apiKey": f"re_{slug}_CANARY{n}"},
            "elevenlabs": {"apiKey": f"el-{slug}-CANARY{n}"},
            "googleCalendar": {
                "clientId": f"{slug}-CANARY{n}.apps.googleusercontent.com",
                "clientSecret": f"GOCSPX-{slug}-CANARY{n}",
                "refreshToken": f"1//{slug}-CANARY{n}",
            },
        },
    )


def secrets_in(doc: dict[str, Any]) -> list[str]:
    return [v for c in doc["spec"]["credentials"].values() for v in c.values()]


def cred(doc: dict[str, Any], provider: str, name: str) -> str:
    value: str = doc["spec"]["credentials"][provider][name]
    return value


@pytest.fixture
def run_verify(cli: Any, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`reconciler verify ARGS` through main(), with every provider's base URL on the stub."""
    for name, value in stub.endpoints_env().items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> Run:
        result: Run = cli("verify", *argv)
        assert_no_traceback(result)
        return result

    return run


@pytest.fixture
def applied(cli: Any, specs: SpecDir) -> Any:
    """Writes (encrypted) and applies spec documents; returns them."""

    def apply(*docs: dict[str, Any]) -> list[dict[str, Any]]:
        for doc in docs:
            specs.write(doc)
        result = cli("apply", str(specs.root))
        assert result.code == 0, result.out + result.err
        return list(docs)

    return apply


def columns(pool: ConnectionPool) -> dict[tuple[str, str], dict[str, Any]]:
    """The verification columns of every credential row, by (slug, provider)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT o.slug, c.provider, c.last_verified_at, c.verification_error,"
            " c.verification_attempted_at, c.is_active"
            " FROM org_credentials c JOIN organizations o ON o.id = c.org_id"
        ).fetchall()
    return {
        (slug, provider): {"at": at, "error": error, "attempted": attempted, "active": active}
        for slug, provider, at, error, attempted, active in rows
    }


def lines_by(run: Run) -> dict[tuple[str, str], str]:
    """Each result line of the text output by (slug, provider): the rest of the line."""
    found: dict[tuple[str, str], str] = {}
    for line in run.lines[:-1]:
        slug, provider, rest = line.split(None, 2)
        found[(slug, provider)] = rest
    return found


# -- reconciler verify ----------------------------------------------------------------------------


def test_every_credential_is_verified_and_recorded(
    applied: Any, run_verify: Any, stub: Stub, pool: ConnectionPool
) -> None:
    acme, beta = applied(full_doc("acme"), full_doc("beta"))
    result = run_verify()
    assert result.code == 0, result.out + result.err
    assert lines_by(result) == {(s, p): "ok" for s in ("acme", "beta") for p in PROVIDERS}
    assert result.last_line == "verified 10 credential(s) of 2 org(s): 10 ok, 0 failed"
    cols = columns(pool)
    assert all(c["at"] is not None and c["error"] is None and c["attempted"] for c in cols.values())
    # one documented call per provider (two for Google), each credential once
    assert Counter(p for p, _, _ in stub.calls) == {
        "twilio": 2, "resend": 2, "elevenlabs": 2, "google_token": 2, "google_calendar": 2
    }  # fmt: skip
    for doc in (acme, beta):
        assert stub.seen[cred(doc, "twilio", "authToken")] == 1
        assert stub.seen[cred(doc, "googleCalendar", "refreshToken")] == 1


def test_one_orgs_401_does_not_stop_another_and_exit_is_1(
    applied: Any,
    run_verify: Any,
    stub: Stub,
    pool: ConnectionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acme, beta = applied(full_doc("acme"), full_doc("beta"))
    stub.modes[cred(beta, "twilio", "authToken")] = "reject"
    stub.modes[cred(beta, "googleCalendar", "refreshToken")] = "reject"
    result = run_verify()
    assert result.code == 1
    lines = lines_by(result)
    assert lines[("beta", "twilio")] == "error  twilio: 401 Authenticate (error 20003)"
    assert lines[("beta", "google_calendar")] == (
        "error  google_calendar: refresh 400 Token has been expired or revoked. (invalid_grant)"
    )
    assert all(lines[("acme", p)] == "ok" for p in PROVIDERS)
    assert lines[("beta", "resend")] == "ok"
    assert result.last_line == (
        "verified 10 credential(s) of 2 org(s): 8 ok, 2 failed (2 rejected)"
    )
    cols = columns(pool)
    assert cols[("beta", "twilio")]["error"] == "twilio: 401 Authenticate (error 20003)"
    assert cols[("beta", "twilio")]["at"] is None  # never verified: stays NULL
    assert cols[("beta", "resend")]["at"] is not None
    assert all(cols[("acme", p)]["at"] is not None for p in PROVIDERS)
    _assert_no_canary(result, caplog, pool, acme, beta)


def test_a_failure_keeps_the_last_success_and_a_success_clears_the_error(
    applied: Any, run_verify: Any, stub: Stub, pool: ConnectionPool
) -> None:
    (acme,) = applied(full_doc("acme"))
    assert run_verify().code == 0
    first = columns(pool)[("acme", "resend")]["at"]
    key = cred(acme, "resend", "apiKey")

    stub.modes[key] = "reject"
    assert run_verify().code == 1
    failed = columns(pool)[("acme", "resend")]
    assert failed["at"] == first
    assert failed["error"] == "resend: 400 API key is invalid (validation_error)"
    assert failed["attempted"] > first

    stub.modes[key] = "ok"
    assert run_verify().code == 0
    healed = columns(pool)[("acme", "resend")]
    assert healed["error"] is None
    assert healed["at"] > first


def test_org_and_provider_filters(
    applied: Any, run_verify: Any, stub: Stub, pool: ConnectionPool
) -> None:
    applied(full_doc("acme"), full_doc("beta"))
    result = run_verify("--org", "beta")
    assert result.code == 0
    assert {slug for slug, _ in lines_by(result)} == {"beta"}
    cols = columns(pool)
    assert all(cols[("acme", p)]["attempted"] is None for p in PROVIDERS)  # untouched
    assert all(cols[("beta", p)]["at"] is not None for p in PROVIDERS)

    result = run_verify("--provider", "googleCalendar", "--provider", "resend")
    assert set(lines_by(result)) == {
        (s, p) for s in ("acme", "beta") for p in ("google_calendar", "resend")
    }

    result = run_verify("--org", "acme", "--org", "nobody")
    assert result.code == 1
    assert result.err.splitlines() == ["error: no org with slug nobody in Postgres"]
    assert {slug for slug, _ in lines_by(result)} == {"acme"}

    with pytest.raises(SystemExit) as bad:
        run_verify("--provider", "mailgun")
    assert bad.value.code == 2


def test_json_format(applied: Any, run_verify: Any, stub: Stub) -> None:
    acme, beta = applied(full_doc("acme"), full_doc("beta"))
    stub.modes[cred(acme, "elevenlabs", "apiKey")] = "down"
    stub.modes[cred(beta, "resend", "apiKey")] = "restricted"
    result = run_verify("--format", "json")
    assert result.code == 1
    doc = json.loads(result.out)
    by = {(r["org"], r["provider"]): r for r in doc["results"]}
    assert by[("acme", "elevenlabs")] == {
        "org": "acme",
        "orgId": acme["metadata"]["id"],
        "provider": "elevenlabs",
        "ok": False,
        "outcome": "unavailable",
        "error": "elevenlabs: 503 upstream connect error",
        "note": None,
    }
    assert by[("beta", "resend")]["ok"] is True
    assert by[("beta", "resend")]["note"] == "sending-only key: valid, cannot list domains"
    assert doc["summary"] == {
        "credentials": 10,
        "orgs": 2,
        "ok": 9,
        "failed": 1,
        "byOutcome": {"ok": 9, "unavailable": 1},
    }
    assert doc["unknownOrgs"] == []


def test_a_restricted_resend_key_is_ok_and_recorded_as_verified(
    applied: Any, run_verify: Any, stub: Stub, pool: ConnectionPool
) -> None:
    (acme,) = applied(full_doc("acme"))
    stub.modes[cred(acme, "resend", "apiKey")] = "restricted"
    result = run_verify("--provider", "resend")
    assert result.code == 0
    assert result.lines[0].split(None, 2)[2] == "ok  (sending-only key: valid, cannot list domains)"
    row = columns(pool)[("acme", "resend")]
    assert row["at"] is not None and row["error"] is None


def test_retries_and_no_verdicts(
    applied: Any,
    run_verify: Any,
    stub: Stub,
    pool: ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(verify_module, "CALL_TIMEOUT_S", 0.5)
    (acme,) = applied(full_doc("acme"))
    stub.modes[cred(acme, "twilio", "authToken")] = "flaky"  # 429 once: retried, ok
    stub.modes[cred(acme, "resend", "apiKey")] = "down"  # 503 twice: unavailable
    stub.modes[cred(acme, "elevenlabs", "apiKey")] = "slow"  # past the call's deadline
    started = time.monotonic()
    result = run_verify()
    assert time.monotonic() - started < 8
    lines = lines_by(result)
    assert lines[("acme", "twilio")] == "ok"
    assert stub.seen[cred(acme, "twilio", "authToken")] == 2
    assert lines[("acme", "resend")] == "error  resend: 503 upstream connect error"
    assert stub.seen[cred(acme, "resend", "apiKey")] == 2  # exactly one retry
    assert lines[("acme", "elevenlabs")] == "error  elevenlabs: timed out after 0.5 s"
    assert stub.seen[cred(acme, "elevenlabs", "apiKey")] == 1  # a timeout is not retried
    assert result.code == 1
    assert columns(pool)[("acme", "elevenlabs")]["error"] == "elevenlabs: timed out after 0.5 s"


def test_no_secret_in_output_logs_or_the_error_column(
    applied: Any,
    run_verify: Any,
    stub: Stub,
    pool: ConnectionPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acme, beta = applied(full_doc("acme"), full_doc("beta"))
    for doc in (acme, beta):  # every provider answers with the secret it was sent, echoed
        for provider, name in (
            ("twilio", "authToken"),
            ("resend", "apiKey"),
            ("elevenlabs", "apiKey"),
            ("googleCalendar", "refreshToken"),
        ):
            stub.modes[cred(doc, provider, name)] = "echo"
            # and quotes the org's other secrets too (the runner masks all of them)
            stub.also_echo[cred(doc, provider, name)] = " ".join(secrets_in(doc))
    with caplog.at_level(logging.DEBUG):
        result = run_verify()
        as_json = run_verify("--format", "json")
    assert result.code == 1
    assert "(sensitive)" in result.out
    lines = lines_by(result)
    assert all(lines[(s, p)].startswith("error  ") for s, p in lines if p != "vapi")
    for run in (result, as_json):
        _assert_no_canary(run, caplog, pool, acme, beta)


def _assert_no_canary(
    run: Run, caplog: pytest.LogCaptureFixture, pool: ConnectionPool, *docs: dict[str, Any]
) -> None:
    errors = " ".join(str(c["error"]) for c in columns(pool).values())
    for doc in docs:
        for secret in secrets_in(doc):
            assert secret not in run.out
            assert secret not in run.err
            assert secret not in caplog.text
            assert secret not in errors
    assert "CANARY" not in run.out + run.err + errors
    assert "ya29." not in run.out + run.err + errors + caplog.text  # Google access tokens


def test_a_row_that_does_not_decrypt_is_its_own_line(
    applied: Any, run_verify: Any, stub: Stub, pool: ConnectionPool
) -> None:
    acme, beta = applied(full_doc("acme"), full_doc("beta"))
    with pool.connection() as conn:  # beta's resend row now holds acme's ciphertext
        conn.execute(
            "UPDATE org_credentials SET encrypted_config = (SELECT encrypted_config"
            " FROM org_credentials WHERE org_id = %s AND provider = 'resend')"
            " WHERE org_id = %s AND provider = 'resend'",
            (acme["metadata"]["id"], beta["metadata"]["id"]),
        )
    result = run_verify()
    assert result.code == 1
    lines = lines_by(result)
    assert lines[("beta", "resend")] == (
        f"error  resend: stored credential {beta['metadata']['id']}:resend does not decrypt:"
        " wrong RECONCILER_MASTER_KEY or a tampered row"
    )
    assert sum(rest == "ok" for rest in lines.values()) == 9
    assert result.last_line.endswith("9 ok, 1 failed (1 unreadable)")
    assert stub.seen[cred(acme, "resend", "apiKey")] == 1  # never sent for beta


def test_verdicts_are_shown_even_when_they_cannot_be_recorded(
    applied: Any, run_verify: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied(full_doc("acme"))

    def down(*args: Any, **kwargs: Any) -> int:
        raise StateError("database unavailable: no connection within the pool timeout")

    monkeypatch.setattr(verification, "record", down)
    result = run_verify()
    assert result.code == 1
    assert set(lines_by(result).values()) == {"ok"}
    assert result.err.splitlines() == [
        "error: the results were not recorded: database unavailable: no connection within the"
        " pool timeout"
    ]


def test_orgs_are_verified_concurrently_within_the_bound(
    applied: Any, run_verify: Any, stub: Stub
) -> None:
    applied(*(full_doc(f"org-{i}") for i in range(6)))
    stub.delay_s = 0.2
    started = time.monotonic()
    result = run_verify("--provider", "resend", "--provider", "elevenlabs")
    took = time.monotonic() - started
    assert result.code == 0
    assert len(lines_by(result)) == 12
    assert 1 < stub.max_inflight <= 4  # RECONCILER_CONCURRENCY in the cli fixture
    assert took < 12 * 0.2  # not one after another


def test_nothing_to_verify(cli: Any, run_verify: Any) -> None:
    result = run_verify()
    assert (result.code, result.out) == (0, "no stored credential to verify\n")


def test_retired_orgs_and_inactive_credentials_are_not_verified(
    applied: Any, run_verify: Any, pool: ConnectionPool, cli: Any, specs: SpecDir
) -> None:
    acme, _ = applied(full_doc("acme"), full_doc("beta"))
    del acme["spec"]["credentials"]["twilio"]  # deactivated by the next apply
    specs.write(acme)
    (specs.root / "beta.yaml").unlink()
    assert cli("apply", str(specs.root)).code == 0
    retired = cli("org", "retire", "beta", "--yes", "--path", str(specs.root))
    assert retired.code == 0, retired.out + retired.err
    assert columns(pool)[("acme", "twilio")]["active"] is False
    result = run_verify()
    assert result.code == 0
    assert set(lines_by(result)) == {
        ("acme", p) for p in ("elevenlabs", "google_calendar", "resend", "vapi")
    }


# -- serve: the scheduled job, shared by replicas ---------------------------------------------


def _job(pool: ConnectionPool, master_key: MasterKey, stub: Stub, emulator: str) -> VerifyJob:
    return VerifyJob(
        pool,
        KeyRing.single(master_key),
        stub.endpoints(emulator),
        interval_s=3600,
        concurrency=4,
    )


def test_replicas_verify_each_credential_once_per_interval(
    applied: Any, stub: Stub, pool: ConnectionPool, master_key: MasterKey, emulator: str
) -> None:
    docs = applied(*(full_doc(f"org-{i}") for i in range(5)))
    stub.delay_s = 0.05
    jobs = [_job(pool, master_key, stub, emulator) for _ in range(3)]
    for job in jobs:
        job.batch = 3  # many claims, interleaved between the replicas
    threads = [threading.Thread(target=job.run_once) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for doc in docs:
        for provider, name in (
            ("twilio", "authToken"),
            ("resend", "apiKey"),
            ("elevenlabs", "apiKey"),
            ("googleCalendar", "refreshToken"),
        ):
            assert stub.seen[cred(doc, provider, name)] == 1, (doc["metadata"]["slug"], provider)
    cols = columns(pool)
    assert all(cols[(d["metadata"]["slug"], "twilio")]["at"] for d in docs)
    # the Vapi key is verified by every reconcile run, not by this job
    assert all(cols[(d["metadata"]["slug"], "vapi")]["attempted"] is None for d in docs)

    calls = len(stub.calls)
    report = jobs[0].run_once()  # nothing is due within the interval
    assert report is not None and report.results == []
    assert len(stub.calls) == calls
    for job in jobs:
        job.halt()
        assert job.wait(5)


def test_a_changed_credential_is_due_at_once(
    applied: Any,
    stub: Stub,
    pool: ConnectionPool,
    master_key: MasterKey,
    emulator: str,
    specs: SpecDir,
    cli: Any,
) -> None:
    (acme,) = applied(full_doc("acme"))
    job = _job(pool, master_key, stub, emulator)
    assert len(job.run_once().results) == 4  # type: ignore[union-attr]
    acme["spec"]["credentials"]["resend"]["apiKey"] = "re_acme_CANARY_rotated"
    specs.write(acme)
    assert cli("apply", str(specs.root)).code == 0
    report = job.run_once()
    assert report is not None
    assert [(r.slug, r.provider, r.ok) for r in report.results] == [("acme", "resend", True)]
    assert stub.seen["re_acme_CANARY_rotated"] == 1


def test_a_result_for_a_row_changed_meanwhile_is_not_recorded(
    applied: Any, pool: ConnectionPool, master_key: MasterKey, stub: Stub, emulator: str
) -> None:
    applied(full_doc("acme"))
    claimed = verification.claim_due(pool, interval_s=3600, limit=10, providers=["resend"])
    assert [c.provider for c in claimed] == ["resend"]
    with pool.connection() as conn:  # an apply stores a new key meanwhile
        conn.execute("UPDATE org_credentials SET updated_at = now() WHERE provider = 'resend'")
    rows = [verification.Verified(claimed[0], ok=False, error="resend: 401 old key")]
    assert verification.record(pool, rows) == 0
    assert columns(pool)[("acme", "resend")]["error"] is None
    # and being changed since its last attempt, the row is due again
    again = verification.claim_due(pool, interval_s=3600, limit=10, providers=["resend"])
    assert [c.provider for c in again] == ["resend"]


def test_stopping_hands_unstarted_rows_back(
    applied: Any, pool: ConnectionPool, master_key: MasterKey, stub: Stub, emulator: str
) -> None:
    applied(full_doc("acme"))
    job = _job(pool, master_key, stub, emulator)
    claimed = verification.claim_due(pool, interval_s=3600, limit=10, providers=job.providers)
    job.halt()
    results, unstarted = job.verifier.verify(claimed)
    assert results == [] and len(unstarted) == 4 and stub.calls == []
    verification.release(pool, unstarted)
    assert all(c["attempted"] is None for c in columns(pool).values())
    assert job.wait(1)


def test_serve_verifies_on_its_schedule_and_stops_cleanly(
    database_url: str,
    master_key: MasterKey,
    emulator: str,
    age_identity: tuple[Path, str],
    pool: ConnectionPool,
    tmp_path: Path,
    specs: SpecDir,
    stub: Stub,
) -> None:
    import signal

    acme, beta = full_doc("acme"), full_doc("beta")
    stub.modes[cred(beta, "twilio", "authToken")] = "echo"
    for doc in (acme, beta):
        specs.write(doc)
    env = session_env(
        database_url, master_key.to_b64(), emulator, age_identity[0], tmp_path / "data"
    )
    env.update(stub.endpoints_env(), RECONCILER_VERIFY_INTERVAL="1h")
    applied = run_cli(env, "apply", str(specs.root))  # stored before serve starts
    assert applied.returncode == 0, applied.stderr
    launcher = ServeLauncher(tmp_path, env)
    summary = "verified 8 credential(s) of 2 org(s): 7 ok, 1 failed (1 rejected)"
    try:
        serve = launcher.start(str(specs.root), interval="60s")
        wait_until(lambda: summary in serve.log(), 30, "one pass over both orgs")
        time.sleep(1.0)  # nothing more within the interval
        assert set(stub.seen.values()) == {1}  # each secret (and access token) once
        assert len([s for s in stub.seen if not s.startswith("ya29.")]) == 8
        code, took = serve.stop(signal.SIGTERM)
        assert code == 0 and took < 10
        log = serve.log()
    finally:
        launcher.close()
    cols = columns(pool)
    assert cols[("beta", "twilio")]["error"] is not None
    assert "(sensitive)" in cols[("beta", "twilio")]["error"]
    assert cols[("acme", "twilio")]["at"] is not None
    assert re.search(r"org beta: credential twilio: twilio: 401 ", log), log
    assert_clean_log(log)
    for doc in (acme, beta):
        for secret in secrets_in(doc):
            assert secret not in log


def test_serve_does_not_verify_with_interval_0(
    database_url: str,
    master_key: MasterKey,
    emulator: str,
    age_identity: tuple[Path, str],
    pool: ConnectionPool,
    tmp_path: Path,
    specs: SpecDir,
    stub: Stub,
) -> None:
    specs.write(full_doc("acme"))
    env = session_env(
        database_url, master_key.to_b64(), emulator, age_identity[0], tmp_path / "data"
    )
    env.update(stub.endpoints_env(), RECONCILER_VERIFY_INTERVAL="0")
    applied = run_cli(env, "apply", str(specs.root))
    assert applied.returncode == 0, applied.stderr
    launcher = ServeLauncher(tmp_path, env)
    try:
        serve = launcher.start(str(specs.root), interval="60s")
        time.sleep(1.5)
        log = serve.log()
    finally:
        launcher.close()
    assert stub.calls == []
    assert "verified" not in log
