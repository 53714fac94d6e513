"""`reconciler import`, the pieces that need no Vapi account: a field the spec cannot hold and an
invalid value are refused by name, and a spec is encrypted in place by sops (fast, with a
throwaway age key). The command against the emulator: tests/integration/test_import.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from reconciler.cli import importer
from reconciler.secrets.sops import EncryptionError, encrypt_bytes
from tests.helpers import SpecDir

KEY = "sk-import-5f3a9c1e7d"
SECRET = "whsec-live-0b7e2d94"
SLUG = "acme-dental"


def test_a_field_the_spec_cannot_express_is_refused() -> None:
    live = {
        "id": "a1", "orgId": "o", "createdAt": "t", "updatedAt": "t", "name": "Bot",
        "newVapiFeature": {"on": True}, "anotherOne": 1,
    }  # fmt: skip
    with pytest.raises(importer.ImportRefused) as caught:
        importer.assistant_fields(live, "inbound")
    assert str(caught.value) == (
        "assistant a1 (inbound): field(s) anotherOne, newVapiFeature cannot be expressed in "
        "the spec (not fields it accepts)"
    )


def test_the_orgs_own_provider_keys_are_left_to_the_reconciler() -> None:
    """Vapi shows an assistant's ElevenLabs dynamic credential without its key: imported as
    is, it would override the org's key with nothing. It is left out (the reconciler adds the
    org's own); a credential of another provider is kept."""
    live = {
        "id": "a1", "orgId": "o", "createdAt": "t", "updatedAt": "t", "name": "Bot",
        "credentials": [{"provider": "11labs"}, {"provider": "cartesia", "name": "c"}],
    }  # fmt: skip
    fields, _, _ = importer.assistant_fields(live, "inbound")
    assert fields["credentials"] == [{"provider": "cartesia", "name": "c"}]
    only = {**live, "credentials": [{"provider": "11labs"}]}
    assert "credentials" not in importer.assistant_fields(only, "inbound")[0]


def test_an_invalid_value_names_the_assistant_and_field() -> None:
    picked = {"outbound": {"id": "a2", "name": "x" * 41}}
    doc = importer.spec_document(
        SLUG, "Acme", str(uuid.uuid4()), KEY, SECRET, {"outbound": {"name": "x" * 41}}
    )
    with pytest.raises(importer.ImportRefused) as caught:
        importer.check_document(doc, picked)
    assert "assistant a2 (outbound): name: String should have at most 40 characters" in str(
        caught.value
    )
    assert KEY not in str(caught.value)


def test_encrypt_bytes_from_memory(
    specs: SpecDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sops reads the plaintext on stdin, by the .sops.yaml nearest to the target's name, from
    any working directory; the target itself is never written."""
    path = specs.root / "plain.yaml"
    monkeypatch.chdir(tmp_path)
    out = encrypt_bytes(b"spec:\n  credentials:\n    vapi: {apiKey: sk-plain-1}\n", path)
    assert b"sk-plain-1" not in out
    assert b"ENC[AES256_GCM" in out
    assert not path.exists()

    lonely = tmp_path / "no-config" / "x.yaml"
    lonely.parent.mkdir()
    monkeypatch.delenv("SOPS_CONFIG", raising=False)
    with pytest.raises(EncryptionError) as caught:
        encrypt_bytes(b"spec:\n  credentials:\n    vapi: {apiKey: sk-plain-2}\n", lonely)
    message = str(caught.value)
    assert message.startswith(f"{lonely}: cannot encrypt: no .sops.yaml")
    assert "\n" not in message and "sk-plain-2" not in message
    assert list(lonely.parent.iterdir()) == []
