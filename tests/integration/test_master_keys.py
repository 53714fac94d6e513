"""Master key rotation (RECONCILER_MASTER_KEYS, `keys status`, `keys rotate`) against real
Postgres and the emulator: a rotation is never a change in `plan`, rows stay readable when
`rotate` is killed midway, and a rerun finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.secrets.crypto import KeyRing, MasterKey, token_key_id
from reconciler.state.store import StateWriter
from reconciler.webhooks.resolver import WebhookResolver
from tests.helpers import SpecDir, key_of, live, org_doc, writes


def ring_env(monkeypatch: pytest.MonkeyPatch, *pairs: tuple[str, MasterKey]) -> str:
    value = ",".join(f"{kid}:{key.to_b64()}" for kid, key in pairs)
    monkeypatch.delenv("RECONCILER_MASTER_KEY", raising=False)
    monkeypatch.setenv("RECONCILER_MASTER_KEYS", value)
    return value


def kids(state: StateWriter) -> list[str]:
    with state.pool.connection() as conn:
        rows = conn.execute("SELECT encrypted_config FROM org_credentials").fetchall()
    return sorted(token_key_id(r[0]) for r in rows)


def server_doc(slug: str, secret: str) -> dict[str, Any]:
    doc = org_doc(slug, secret=secret, extra_credentials={"resend": {"apiKey": f"re-{slug}"}})
    doc["spec"]["assistants"]["inbound"]["server"] = {"url": "https://hooks.example.com/vapi"}
    return doc


def test_a_rotation_is_never_a_change_in_plan(
    cli: Any,
    specs: SpecDir,
    emulator: str,
    state: StateWriter,
    master_key: MasterKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acme = server_doc("acme", "whsec-acme-rot")
    specs.write(acme)
    specs.write(server_doc("globex", "whsec-globex-rot"))
    assert cli("apply", str(specs.root)).code == 0
    assert kids(state) == ["default"] * 4
    before = writes(emulator)

    new = MasterKey.generate()
    ring_env(monkeypatch, ("k2026", new), ("default", master_key))
    # both keys, the new one first, before `keys rotate`: 'default' is still the active key, so
    # nothing is written under 'k2026' yet (a process with the old key alone must read it all)
    plan = cli("plan", str(specs.root), "--detailed-exitcode")
    waiting = "the active master key is 'default' (recorded in Postgres), but"
    assert plan.code == 1 and waiting in plan.out, plan.out + plan.err
    assert "sensitive value changed" not in plan.out
    apply = cli("apply", str(specs.root))
    assert apply.code == 1 and waiting in apply.out and writes(emulator) == before
    assert kids(state) == ["default"] * 4
    status = cli("keys", "status")
    assert status.code == 1 and "default" in status.out and "4 row(s)" in status.out
    assert "lists 'k2026' first" in status.err

    rotated = cli("keys", "rotate")
    assert rotated.code == 0, rotated.err
    assert "re-encrypted 4 of 4" in rotated.out
    assert kids(state) == ["k2026"] * 4
    status = cli("keys", "status").out
    assert "k2026" in status and "(active)" in status and "default" not in status
    again = cli("keys", "rotate")
    assert "re-encrypted 0 of 4" in again.out  # idempotent

    ring_env(monkeypatch, ("k2026", new))  # the old key is gone
    plan = cli("plan", str(specs.root), "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err
    assert cli("apply", str(specs.root)).code == 0 and writes(emulator) == before
    inbound = next(a for a in live(emulator, key_of(acme)) if a["metadata"]["role"] == "inbound")
    raw = json.dumps({"message": {"type": "status-update", "call": {"assistantId": inbound["id"]}}})
    hit = WebhookResolver(state, KeyRing.single(new, "k2026")).resolve(
        {"x-vapi-secret": "whsec-acme-rot"}, raw.encode()
    )
    assert hit.slug == "acme"
    for run in (plan, rotated, status):
        for value in (master_key.to_b64(), new.to_b64()):
            assert value not in str(run)


def _seed_rows(state: StateWriter, key: MasterKey, n: int) -> None:
    with state.pool.connection() as conn, conn.transaction():
        for i in range(n):
            org_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, %s)",
                (org_id, f"org-{i:05d}", f"Org {i}"),
            )
            config = {"apiKey": f"re-{i}"}
            conn.execute(
                "INSERT INTO org_credentials (org_id, provider, encrypted_config, fingerprint)"
                " VALUES (%s, 'resend', %s, %s)",
                (org_id, key.encrypt(config, aad=f"{org_id}:resend"), key.fingerprint(config)),
            )


def _all_open(state: StateWriter, ring: KeyRing) -> int:
    with state.pool.connection() as conn:
        rows = conn.execute("SELECT org_id::text, encrypted_config FROM org_credentials").fetchall()
    for org_id, token in rows:
        assert ring.decrypt(token, aad=f"{org_id}:resend")["apiKey"].startswith("re-")
    return len(rows)


def test_rotate_killed_midway_leaves_every_row_readable_and_a_rerun_finishes(
    state: StateWriter, master_key: MasterKey, database_url: str, tmp_path: Path
) -> None:
    _seed_rows(state, master_key, 3000)
    new = MasterKey.generate()
    ring = KeyRing((("k2", new), ("default", master_key)))
    env = {
        **os.environ,
        "RECONCILER_DATABASE_URL": database_url,
        "RECONCILER_MASTER_KEYS": f"k2:{new.to_b64()},default:{master_key.to_b64()}",
        "RECONCILER_DATA_DIR": str(tmp_path),
    }
    env.pop("RECONCILER_MASTER_KEY", None)
    cmd = [sys.executable, "-m", "reconciler", "keys", "rotate", "--batch", "20"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    for _ in range(5):  # a few batches committed, then SIGKILL mid-run
        assert proc.stderr.readline(), "rotate ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    assert _all_open(state, ring) == 3000  # every row still opens: old key or new
    partial = kids(state)
    assert "k2" in partial and "default" in partial, "the kill was not midway"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert kids(state) == ["k2"] * 3000
    assert _all_open(state, KeyRing.single(new, "k2")) == 3000  # the old key not needed


def test_key_settings_and_unknown_key_ids_are_one_line_errors(
    cli: Any,
    specs: SpecDir,
    state: StateWriter,
    master_key: MasterKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    specs.write(org_doc("acme"))
    assert cli("apply", str(specs.root)).code == 0
    key = MasterKey.generate().to_b64()
    monkeypatch.setenv("RECONCILER_MASTER_KEYS", f"k1:{key}")
    both = cli("keys", "status")  # RECONCILER_MASTER_KEY is still set by the fixture
    assert both.code == 1 and "not both" in both.err
    monkeypatch.delenv("RECONCILER_MASTER_KEY")
    for bad, says in (
        (f"k1:{key},k1:{key}", "twice"),
        ("k1:not-base64!", "not valid base64"),
        (f"k1:{key[:-8]}", "32 bytes"),
        (key, "key_id:base64key"),
        (f"bad id:{key}", "key id"),
    ):
        monkeypatch.setenv("RECONCILER_MASTER_KEYS", bad)
        run = cli("keys", "status")
        assert run.code == 1 and says in run.err, (bad, run.err)
        assert key not in run.err and len(run.err.strip().splitlines()) == 1

    monkeypatch.setenv("RECONCILER_MASTER_KEYS", f"k1:{key}")  # the rows' key is missing
    status = cli("keys", "status")
    assert status.code == 1 and "NOT in RECONCILER_MASTER_KEYS" in status.out
    rotate = cli("keys", "rotate")
    lacks = "credential vapi of org acme is under master key 'default', which"
    assert rotate.code == 1 and lacks in rotate.err
    assert kids(state) == ["default"]  # nothing it could not open was touched
