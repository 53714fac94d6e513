"""Master key rotation of the stored credentials: which key ids hold rows, which rows do not
open, and re-encrypting every row to the active key in batches.

`rotate` first makes the ring's first key id the active one Postgres records (`master_key`),
in its own committed transaction, before it re-encrypts anything: from then on no process
whose active key is another writes a credential (`StateWriter.credentials.store`), so a row
it has re-encrypted is never written back under the old key, and a crash half-way is safe to
run again. It refuses to make active a key id an earlier rotation replaced (a rotation is
never undone), and to run at all while a row is under a key id this process lacks.

Online and idempotent: each batch is one transaction that locks its rows (`FOR UPDATE`), so a
concurrent apply waits for it and a kill loses at most the batch in hand, which is rolled back
whole; the next run skips rows already under the active key. A row's fingerprint is re-keyed
with it, so a rotation never shows as a credential change in `plan`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import Connection

from reconciler.errors import MasterKeyRefused
from reconciler.secrets.crypto import CredentialDecryptError, KeyRing, UnknownKeyId, token_key_id
from reconciler.state.store import StateWriter, state_error, writer_name

BATCH = 200


@dataclass
class Rotation:
    rotated: int = 0  # rows re-encrypted by this run
    checked: int = 0  # rows read
    failed: list[str] = field(default_factory=list)  # one line per row that did not open
    refused: list[str] = field(default_factory=list)  # why nothing was rotated (one line each)


@dataclass(frozen=True)
class Unopened:
    """A stored credential row that does not open under this process's keys."""

    slug: str
    provider: str
    key_id: str
    missing: bool  # the key id is not in the ring (else: the key is wrong, or the row tampered)

    def line(self) -> str:
        if self.missing:
            return str(MasterKeyRefused.missing(self.slug, self.provider, self.key_id))
        return (
            f"credential {self.provider} of org {self.slug} does not open under master key "
            f"{self.key_id!r}: a wrong key in RECONCILER_MASTER_KEYS, or a tampered row"
        )


def _tokens(encrypted: str, previous: str | None) -> list[str]:
    return [encrypted, *(previous or "").split()]


def key_status(state: StateWriter) -> dict[str, int]:
    """Rows per key id (a row counts once for each key id among its current and replaced
    ciphertexts); only ids that hold rows."""
    counts: Counter[str] = Counter()
    try:
        with state.pool.connection() as conn:
            rows = conn.execute(
                "SELECT encrypted_config, previous_encrypted_config FROM org_credentials"
            ).fetchall()
    except Exception as exc:  # psycopg errors, as one line
        raise state_error(exc) from None
    for encrypted, previous in rows:
        for kid in {token_key_id(t) for t in _tokens(encrypted, previous)}:
            counts[kid] += 1
    return dict(sorted(counts.items()))


def unopened(state: StateWriter, ring: KeyRing) -> list[Unopened]:
    """Every row (current or replaced ciphertext) that does not open under `ring`: one entry
    per (row, key id), by org slug and provider. Decrypts every row: for `keys status`."""
    try:
        with state.pool.connection() as conn:
            rows = conn.execute(
                "SELECT o.slug, c.org_id::text, c.provider, c.encrypted_config,"
                " c.previous_encrypted_config FROM org_credentials c"
                " JOIN organizations o ON o.id = c.org_id ORDER BY o.slug, c.provider"
            ).fetchall()
    except Exception as exc:
        raise state_error(exc) from None
    out: list[Unopened] = []
    for slug, org_id, provider, encrypted, previous in rows:
        seen: set[str] = set()
        for token in _tokens(encrypted, previous):
            kid = token_key_id(token)
            if kid in seen:
                continue
            try:
                ring.decrypt(token, aad=f"{org_id}:{provider}")
            except UnknownKeyId:
                out.append(Unopened(slug, provider, kid, True))
                seen.add(kid)
            except (CredentialDecryptError, ValueError):
                out.append(Unopened(slug, provider, kid, False))
                seen.add(kid)
    return out


_LACKING_SQL = """
SELECT o.slug, c.provider, k.kid
FROM org_credentials c JOIN organizations o ON o.id = c.org_id,
LATERAL (SELECT DISTINCT reconciler_token_key_id(t) AS kid
         FROM unnest(array_prepend(c.encrypted_config,
           string_to_array(COALESCE(c.previous_encrypted_config, ''), ' '))) AS t
         WHERE t <> '') AS k
WHERE k.kid <> ALL(%s)
ORDER BY o.slug, c.provider, k.kid
"""


def _make_active(conn: Connection[Any], ring: KeyRing) -> list[str]:
    """Records the ring's first key id as the active one (in the caller's transaction), unless
    a row is under a key id the ring lacks or that id was replaced by an earlier rotation:
    then returns why, one line each, and records nothing."""
    active, check = ring.active_id, ring.check_value()
    record = conn.execute(
        "SELECT key_id, retired, key_check FROM master_key WHERE id FOR UPDATE"
    ).fetchone()
    if record is not None and record[0] == active and record[2] not in (None, check):
        return [str(MasterKeyRefused.wrong_key(None, active))]
    if record is not None and record[0] != active and active in record[1]:
        return [
            f"master key {active!r} was replaced by an earlier `keys rotate`, and a rotation "
            f"is never undone (the active one is {record[0]!r}); to use that key again, give "
            "it a new id"
        ]
    lacking = conn.execute(_LACKING_SQL, (list(ring.ids),)).fetchall()
    if lacking:
        return [
            str(MasterKeyRefused.missing(slug, provider, kid)) for slug, provider, kid in lacking
        ]
    sample = conn.execute(  # a wrong key under an id in use: refused before it is recorded
        "SELECT o.slug, c.org_id::text, c.provider, c.encrypted_config FROM org_credentials c"
        " JOIN organizations o ON o.id = c.org_id"
        " WHERE reconciler_token_key_id(c.encrypted_config) = %s LIMIT 1",
        (active,),
    ).fetchone()
    if sample is not None:
        try:
            ring.decrypt(sample[3], aad=f"{sample[1]}:{sample[2]}")
        except (CredentialDecryptError, ValueError):
            return [Unopened(sample[0], sample[2], active, False).line()]
    by = f"keys rotate ({writer_name()})"
    if record is None:
        in_use = conn.execute(
            "SELECT DISTINCT reconciler_token_key_id(t) FROM org_credentials c,"
            " unnest(array_prepend(c.encrypted_config, string_to_array("
            " COALESCE(c.previous_encrypted_config, ''), ' '))) AS t WHERE t <> ''"
        ).fetchall()
        replaced = sorted({kid for (kid,) in in_use} - {active})
        won = conn.execute(
            "INSERT INTO master_key (key_id, key_check, retired, set_by)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING key_id",
            (active, check, replaced, by),
        ).fetchone()
        if won is None:
            return ["the active master key was recorded by another process meanwhile: run again"]
    elif record[0] != active:
        conn.execute(
            "UPDATE master_key SET key_id = %s, key_check = %s, set_by = %s, set_at = now(),"
            " retired = array_append(array_remove(retired, %s), key_id) WHERE id",
            (active, check, by, active),
        )
    elif record[2] is None:  # recorded by the migration, without a check value: now it has one
        conn.execute("UPDATE master_key SET key_check = %s WHERE id", (check,))
    return []


def rotate(
    state: StateWriter,
    ring: KeyRing,
    *,
    batch: int = BATCH,
    progress: Callable[[Rotation], None] | None = None,
) -> Rotation:
    """Re-encrypts every credential row (and its replaced webhook configs) whose ciphertext is
    not under the active key, `batch` rows per transaction."""
    done = Rotation()
    active = ring.active_id
    try:
        with state.pool.connection() as conn, conn.transaction():
            done.refused = _make_active(conn, ring)
    except psycopg.Error as exc:
        raise state_error(exc) from None
    if done.refused:
        return done
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        try:
            with state.pool.connection() as conn, conn.transaction():
                pinned = conn.execute(
                    "SELECT key_id, key_check FROM master_key WHERE id FOR SHARE"
                ).fetchone()
                if pinned is None or pinned[0] != active:  # another rotation took over
                    recorded = pinned[0] if pinned else "?"
                    raise MasterKeyRefused.not_active(None, active, recorded, list(ring.ids))
                if pinned[1] not in (None, ring.check_value()):
                    raise MasterKeyRefused.wrong_key(None, active)
                rows = conn.execute(
                    "SELECT id::text, org_id::text, provider, encrypted_config,"
                    " previous_encrypted_config FROM org_credentials"
                    " WHERE id > %s::uuid ORDER BY id LIMIT %s FOR UPDATE",
                    (after, batch),
                ).fetchall()
                for row_id, org_id, provider, encrypted, previous in rows:
                    done.checked += 1
                    tokens = _tokens(encrypted, previous)
                    if all(token_key_id(t) == active for t in tokens):
                        continue
                    aad = f"{org_id}:{provider}"
                    try:
                        configs = [ring.decrypt(t, aad=aad) for t in tokens]
                    except Exception as exc:  # CredentialDecryptError: named, never a value
                        done.failed.append(str(exc))
                        continue
                    sealed = [ring.encrypt(c, aad=aad) for c in configs]
                    conn.execute(
                        "UPDATE org_credentials SET encrypted_config = %s,"
                        " previous_encrypted_config = %s, fingerprint = %s WHERE id = %s",
                        (
                            sealed[0],
                            " ".join(sealed[1:]) or None,
                            ring.fingerprint(configs[0]),
                            row_id,
                        ),
                    )
                    done.rotated += 1
        except MasterKeyRefused:
            raise
        except Exception as exc:
            raise state_error(exc) from None
        if progress is not None:
            progress(done)
        if len(rows) < batch:
            return done
        after = rows[-1][0]
