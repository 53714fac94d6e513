"""Errors that the CLI turns into one-line messages (never a traceback, never a secret)."""


class ReconcilerError(Exception):
    """Base of every error we expect: its message is safe to show and names the culprit."""


class SpecError(ReconcilerError):
    """A spec file is broken: the message names the file and the field path."""


class DecryptionError(ReconcilerError):
    """SOPS could not decrypt a spec (wrong key, tampered ciphertext, missing sops metadata)."""


class ConfigError(ReconcilerError):
    """The environment is misconfigured (master key, database URL, ...)."""
