"""Master key rotation of the stored credentials: which key ids hold rows, and re-encrypting
every row to the active key in batches.

Online and idempotent: each batch is one transaction that locks its rows (`FOR UPDATE`), so a
concurrent apply waits for it and a kill loses at most the batch in hand, which is rolled back
whole; the next run skips rows already under the active key. A row's fingerprint is re-keyed
with it, so a rotation never shows as a credential change in `plan`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.secrets.crypto import KeyRing, token_key_id
from reconciler.state.store import StateWriter, state_error

BATCH = 200


@dataclass
class Rotation:
    rotated: int = 0  # rows re-encrypted by this run
    checked: int = 0  # rows read
    failed: list[str] = field(default_factory=list)  # one line per row that did not open


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
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        try:
            with state.pool.connection() as conn, conn.transaction():
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
        except Exception as exc:
            raise state_error(exc) from None
        if progress is not None:
            progress(done)
        if len(rows) < batch:
            return done
        after = rows[-1][0]
