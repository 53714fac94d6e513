"""What the tests share, in one place; import it as `from tests.helpers import ...`.

- paths: `ROOT` (the repository), `FIXTURES` (tests/fixtures), `VAPI_OPENAPI`
- specs: `org_doc`, `key_of`, `SpecDir`, `sops_rules`, `encrypt_in_place`, `loaded`, `git`
- a Vapi account in the emulator: `live`, `tagged`, `create_assistant`, `edit_assistant`,
  `accounts`, `add_key`
- the emulator's faults and counters: `fault`, `clear_faults`, `emulator_stats`, `writes`,
  `deletes`, `reset_emulator`
- Vapi's and the emulator's schemas: `vapi_openapi_schemas`, `union_providers`,
  `providers_declaring`
- Postgres rows: `TABLES`, `mappings`, `active_mappings`; a `StateReader` whose assistant
  look-ups are slow: `SlowReader`
- runs of the CLI: `Run`, `assert_no_traceback`; a fresh interpreter: `run_python`; Vapi calls
  without real waits: `FAST_RETRY`

Beside it: `tests.helpers.serve` (real `reconciler serve` processes, Postgres look-ups by SQL,
atomic spec edits) and `tests.helpers.netproxy` (a Postgres connection a test can cut). The
fixtures (Postgres, the emulator, an age key, `cli`, `controller`) are in tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from reconciler.engine.model import tag_of
from reconciler.secrets.sops import sops_binary
from reconciler.spec.loader import LoadResult, SpecFile
from reconciler.spec.models import Organization
from reconciler.state.store import AssistantReader, Db, StateReader
from reconciler.vapi.client import RetryPolicy
from reconciler.vapi.emulator_schema import SCHEMA_PATH, AssistantValidator

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
# Vapi's OpenAPI `Assistant` schema and the schemas it refers to, made by scripts/vendor_openapi.py.
VAPI_OPENAPI = FIXTURES / "vapi-openapi-assistant.json"

# Every table the reconciler writes, for TRUNCATE between tests.
TABLES = (
    "reconcile_runs, assistant_org_mapping, assistants, org_credentials, organizations,"
    " org_runs, org_schedule, master_key"
)

# Retries as the client makes them, without the waits.
FAST_RETRY = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.01, sleep=lambda _s: None)


# -- specs -----------------------------------------------------------------------------------


def org_doc(
    slug: str,
    *,
    org_id: str | None = None,
    api_key: str | None = None,
    secret: str | None = None,
    assistants: dict[str, Any] | None = None,
    extra_credentials: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid spec document for org `slug` (plaintext credentials, two assistants by default)."""
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


def key_of(doc: dict[str, Any]) -> str:
    """The Vapi API key of a spec document."""
    key: str = doc["spec"]["credentials"]["vapi"]["apiKey"]
    return key


def sops_rules(public_key: str) -> str:
    """A `.sops.yaml` that encrypts the `credentials` of every spec to one age key."""
    return (
        "creation_rules:\n"
        "  - path_regex: \\.yaml$\n"
        "    encrypted_regex: ^credentials$\n"
        "    mac_only_encrypted: true\n"
        f"    age: {public_key}\n"
    )


def encrypt_in_place(path: Path) -> None:
    """`sops encrypt -i PATH` with the `.sops.yaml` of PATH's folder."""
    subprocess.run(
        [sops_binary(), "encrypt", "-i", str(path)],
        check=True,
        capture_output=True,
        cwd=path.parent,
    )


class SpecDir:
    """A folder of specs encrypted to one age key, like a user's repository."""

    def __init__(self, root: Path, public_key: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / ".sops.yaml").write_text(sops_rules(public_key))

    def write(self, doc: dict[str, Any], *, encrypt: bool = True, name: str | None = None) -> Path:
        """Writes `doc` as NAME.yaml (default: its slug), encrypted unless `encrypt=False`."""
        path = self.root / f"{name or doc['metadata']['slug']}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if encrypt:
            encrypt_in_place(path)
        return path


def loaded(*docs: dict[str, Any], digests: bool = False) -> LoadResult:
    """Spec documents as the loader hands them over (decrypted, SLUG.yaml): no sops needed.
    `digests`: each with a digest of its content (of its JSON here, of its bytes in the
    loader), which the controller remembers a spec's facts by."""
    return LoadResult(
        [
            SpecFile(
                Path(f"{d['metadata']['slug']}.yaml"),
                Organization.model_validate(d),
                hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
                if digests
                else "",
            )
            for d in docs
        ],
        [],
    )


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


# -- a Vapi account in the emulator ------------------------------------------------------------

# One connection pool for the many look-ups and polls. Idle connections are dropped well before a
# server would close them (uvicorn's default is 5 s, httpx's too), so no request is ever sent on a
# connection that the server is closing at that moment ("connection reset by peer").
SHORT_KEEPALIVE = httpx.Limits(keepalive_expiry=2.0)
_http = httpx.Client(timeout=10, limits=SHORT_KEEPALIVE)


def live(emulator: str, api_key: str) -> list[dict[str, Any]]:
    """Every assistant in the emulator account of `api_key`, newest first (up to 1000)."""
    resp = _http.get(
        f"{emulator}/assistant",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()
    return found


def tagged(emulator: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The assistants in the account of `doc`'s key that carry a reconciler ownership tag."""
    return [a for a in live(emulator, key_of(doc)) if tag_of(a) is not None]


def create_assistant(emulator: str, api_key: str, body: dict[str, Any]) -> dict[str, Any]:
    """Creates an assistant in the account of `api_key` behind the reconciler's back."""
    resp = _http.post(
        f"{emulator}/assistant", json=body, headers={"Authorization": f"Bearer {api_key}"}
    )
    resp.raise_for_status()
    created: dict[str, Any] = resp.json()
    return created


def edit_assistant(
    emulator: str, api_key: str, assistant_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """PATCHes an assistant behind the reconciler's back, as someone in the Vapi dashboard."""
    resp = _http.patch(
        f"{emulator}/assistant/{assistant_id}",
        json=changes,
        headers={"Authorization": f"Bearer {api_key}"},
    )
    resp.raise_for_status()
    edited: dict[str, Any] = resp.json()
    return edited


def accounts(emulator: str) -> dict[str, dict[str, Any]]:
    """The emulator's accounts by key fingerprint (GET /_emulator/accounts)."""
    found: dict[str, dict[str, Any]] = _http.get(f"{emulator}/_emulator/accounts").json()
    return found


def add_key(emulator: str, api_key: str, new_key: str) -> dict[str, Any]:
    """Makes `new_key` a second key of the account of `api_key`; the emulator's answer."""
    resp = _http.post(f"{emulator}/_emulator/keys", json={"token": api_key, "new_token": new_key})
    assert resp.status_code == 201, resp.text
    added: dict[str, Any] = resp.json()
    return added


# -- the emulator's faults and counters --------------------------------------------------------


def fault(emulator: str, **spec: Any) -> dict[str, Any]:
    """Arms one fault (POST /_emulator/faults: method, path, mode, ...); the fault as stored."""
    resp = _http.post(f"{emulator}/_emulator/faults", json=spec)
    assert resp.status_code == 201, resp.text
    armed: dict[str, Any] = resp.json()
    return armed


def clear_faults(emulator: str) -> None:
    """Removes every fault still armed."""
    _http.delete(f"{emulator}/_emulator/faults").raise_for_status()


def twilio_number(emulator: str, account_sid: str, number: str) -> None:
    """Makes `number` one of the Twilio account `account_sid`'s numbers in the emulator's
    Twilio stub (its IncomingPhoneNumbers listing)."""
    resp = _http.post(
        f"{emulator}/_emulator/twilio/numbers",
        json={"accountSid": account_sid, "phoneNumber": number},
    )
    assert resp.status_code == 201, resp.text


def twilio_outage(emulator: str, status: int | None, times: int | None = None) -> None:
    """The Twilio stub's listing answers `status` (`times` times; None: until cleared)."""
    resp = _http.post(
        f"{emulator}/_emulator/twilio/outage", json={"status": status, "times": times}
    )
    assert resp.status_code == 201, resp.text


def reset_emulator(emulator: str) -> None:
    """Forgets every account, assistant, fault and counter of the emulator."""
    _http.post(f"{emulator}/_emulator/reset").raise_for_status()


def emulator_stats(emulator: str) -> dict[str, int]:
    """Requests the emulator received since its last reset, by route ("POST /assistant", ...)."""
    stats: dict[str, int] = _http.get(f"{emulator}/_emulator/stats").json()["requests"]
    return stats


def writes(emulator: str) -> int:
    """POST, PATCH and DELETE requests on assistants since the last reset."""
    s = emulator_stats(emulator)
    return s["POST /assistant"] + s["PATCH /assistant/{id}"] + s["DELETE /assistant/{id}"]


def deletes(emulator: str) -> int:
    """DELETE requests on assistants since the last reset."""
    return emulator_stats(emulator)["DELETE /assistant/{id}"]


# -- Vapi's schemas: the vendored OpenAPI extract, and the emulator's own ---------------------


def vapi_openapi_schemas() -> dict[str, Any]:
    """The component schemas of the vendored Vapi OpenAPI extract; fails saying how to make it."""
    if not VAPI_OPENAPI.is_file():
        pytest.fail(
            f"{VAPI_OPENAPI} is missing: it is committed; regenerate it from Vapi's OpenAPI"
            " document with `python scripts/vendor_openapi.py vapi-openapi.json`",
            pytrace=False,
        )
    schemas: dict[str, Any] = json.loads(VAPI_OPENAPI.read_text(encoding="utf-8"))["components"][
        "schemas"
    ]
    return schemas


def union_providers(field: str) -> list[str | None]:
    """The providers of the union `field` in the create schema ([None]: not a union)."""
    defs = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["defs"]
    members = defs["CreateAssistantDTO"]["properties"][field].get("oneOf")
    if not members:
        return [None]
    return [p for m in members for p in defs[m["$ref"]]["properties"]["provider"]["enum"]]


def providers_declaring(validator: AssistantValidator, field: str, sub: str) -> list[str | None]:
    """The providers of the union `field` whose schema declares the sub-field `sub`."""
    return [
        p
        for p in union_providers(field)
        if sub in validator.member_properties(field, {"provider": p} if p else {})
    ]


# -- Postgres rows -----------------------------------------------------------------------------


def mappings(pool: ConnectionPool, org_id: str) -> list[tuple[str, str, bool]]:
    """(role, assistant id, active) of every assistant_org_mapping row of the org, sorted."""
    with pool.connection() as conn:
        return conn.execute(
            "SELECT assistant_role, vapi_assistant_id, inactive_at IS NULL"
            " FROM assistant_org_mapping WHERE org_id = %s ORDER BY 1, 2",
            (org_id,),
        ).fetchall()


def active_mappings(pool: ConnectionPool) -> list[tuple[str, str, str]]:
    """(org id, role, assistant id) of every active assistant_org_mapping row, sorted."""
    with pool.connection() as conn:
        return conn.execute(
            "SELECT org_id::text, assistant_role, vapi_assistant_id FROM assistant_org_mapping"
            " WHERE inactive_at IS NULL ORDER BY 1, 2"
        ).fetchall()


class _SlowAssistants(AssistantReader):
    def resolve(self, vapi_assistant_id: str) -> dict[str, Any] | None:
        time.sleep(0.2)
        return super().resolve(vapi_assistant_id)


class SlowReader(StateReader):
    """Assistant look-ups that take a while, so that concurrent misses overlap."""

    def _compose(self, db: Db) -> None:
        super()._compose(db)
        self.assistants = _SlowAssistants(db)


# -- runs of the CLI ---------------------------------------------------------------------------


@dataclass
class Run:
    """What one `main([...])` call of the `cli` fixture returned and printed."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def last_line(self) -> str:
        return self.lines[-1] if self.lines else ""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in a fresh interpreter at the repository root; its output captured."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )


def assert_no_traceback(run: Run) -> None:
    """The run printed no traceback and no internal error."""
    assert "Traceback" not in run.out + run.err
    assert "internal error" not in run.out + run.err


def listening_socket() -> socket.socket:
    """A listening socket on a free 127.0.0.1 port. Its protocol is named (IPPROTO_TCP):
    asyncio sets TCP_NODELAY only on such sockets, and without it every answer waits ~40 ms
    (Nagle and delayed ACKs)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextmanager
def served(app: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """`app` served by uvicorn (lifespan on, no access log: paths may hold secrets) on a free
    127.0.0.1 port in a thread, or on the caller's listening `sock` (any address; closed
    after); yields its base URL (127.0.0.1's for a socket on every address)."""
    import uvicorn

    sock = sock if sock is not None else listening_socket()
    config = uvicorn.Config(app, log_config=None, lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    try:
        yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def emulator_client(base_url: str, token: str | None) -> httpx.Client:
    """A client of the emulator as one Vapi account (its API key `token`), or its admin routes
    (`None`: no key)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=10, limits=SHORT_KEEPALIVE)
