"""Errors that the CLI turns into one-line messages (never a traceback, never a secret)."""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error we expect: its message is safe to show and names the culprit."""


class SpecError(ReconcilerError):
    """A spec file is broken: the message names the file and the field path."""


class DecryptionError(ReconcilerError):
    """SOPS could not decrypt a spec (wrong key, tampered ciphertext, missing sops metadata)."""


class ConfigError(ReconcilerError):
    """The environment is misconfigured (master key, database URL, ...)."""


class MasterKeyRefused(ReconcilerError):
    """No credential is written: the stored row is under a master key id this process lacks,
    or this process's active key is not the one `keys rotate` made active (Postgres's
    `master_key` row). One line, naming the key ids, never a key."""

    def __init__(
        self,
        message: str,
        *,
        org: str,
        provider: str | None,
        key_id: str,
        active_id: str | None = None,
        recorded_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.org = org  # slug (or id when the slug is not known)
        self.provider = provider  # None: any credential of the org
        self.key_id = key_id  # the key id at issue
        self.active_id = active_id  # this process's active key id
        self.recorded_id = recorded_id  # the active key id Postgres records

    @classmethod
    def missing(cls, org: str, provider: str, key_id: str) -> MasterKeyRefused:
        """A stored credential is under a key id this process does not hold."""
        return cls(
            f"credential {provider} of org {org} is under master key {key_id!r}, "
            "which RECONCILER_MASTER_KEYS lacks",
            org=org,
            provider=provider,
            key_id=key_id,
        )

    @classmethod
    def not_active(
        cls,
        org: str | None,
        active_id: str,
        recorded_id: str,
        held: tuple[str, ...] | list[str],
    ) -> MasterKeyRefused:
        """This process encrypts under `active_id`, but `keys rotate` made `recorded_id`
        active: writing would undo the rotation. `org` None: any org (a serve replica)."""
        if recorded_id in held:
            fix = f"but RECONCILER_MASTER_KEYS lists {active_id!r} first"
        else:
            fix = "which RECONCILER_MASTER_KEYS lacks"
        which = "no credential" if org is None else f"no credential of org {org}"
        return cls(
            f"{which} is written: the active master key is {recorded_id!r} "
            f"(recorded in Postgres), {fix}",
            org=org or "",
            provider=None,
            key_id=recorded_id,
            active_id=active_id,
            recorded_id=recorded_id,
        )

    @classmethod
    def wrong_key(cls, org: str | None, key_id: str) -> MasterKeyRefused:
        """This process's key under the active id is not the one recorded (a wrong key)."""
        which = "no credential" if org is None else f"no credential of org {org}"
        return cls(
            f"{which} is written: RECONCILER_MASTER_KEYS holds another key under the active "
            f"id {key_id!r} than the one Postgres records (a wrong key)",
            org=org or "",
            provider=None,
            key_id=key_id,
            active_id=key_id,
            recorded_id=key_id,
        )
