"""The master key ring: ids in ciphertexts and fingerprints, old `v1` rows, bad settings."""

from __future__ import annotations

import pytest

from reconciler.engine.desired import leaf_fingerprint
from reconciler.engine.model import DesiredCredential, Sensitive, leaf_key_ids
from reconciler.errors import ConfigError
from reconciler.secrets.crypto import (
    CredentialDecryptError,
    KeyRing,
    MasterKey,
    token_key_id,
)

OLD, NEW = MasterKey.generate(), MasterKey.generate()


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    v1 = OLD.encrypt({"a": 1}, aad="org:vapi")  # a row written before key ids existed
    ring = KeyRing((("k2", NEW), ("default", OLD)))
    assert token_key_id(v1) == "default" and ring.decrypt(v1, aad="org:vapi") == {"a": 1}
    token = ring.encrypt({"a": 2}, aad="org:vapi")
    assert token.startswith("v2:k2:") and ring.decrypt(token, aad="org:vapi") == {"a": 2}
    with pytest.raises(CredentialDecryptError, match="org:twilio"):
        ring.decrypt(token, aad="org:twilio")  # bound to its row
    with pytest.raises(CredentialDecryptError, match="key id 'default'"):
        KeyRing.single(NEW, "k2").decrypt(v1, aad="org:vapi")
    with pytest.raises(CredentialDecryptError, match="unknown format"):
        ring.decrypt("v2:" + token[6:].replace(":", ""), aad="org:vapi")


def test_fingerprints_name_their_key_and_match_across_a_rotation() -> None:
    config = {"apiKey": "k"}
    old, new = KeyRing.single(OLD), KeyRing((("k2", NEW), ("default", OLD)))
    stored = old.fingerprint(config)
    assert ":" not in stored  # rows from before key ids keep their fingerprint
    assert new.fingerprint(config).startswith("k2:")
    cred = DesiredCredential(
        "resend", new.fingerprint(config), Sensitive(config), new.fingerprints(config)
    )
    assert cred.matches(stored) and cred.matches(new.fingerprint(config))
    assert not cred.matches(old.fingerprint({"apiKey": "other"}))
    leaf = leaf_fingerprint(new)("secret")
    assert leaf.startswith("sha256-hmac:k2:") and leaf_key_ids({"h": [leaf]}) == {"k2"}
    assert leaf_key_ids(leaf_fingerprint(old)("secret")) == {"default"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no key"),
        ("k1", "key_id:base64key"),
        ("k1:@@@", "not valid base64"),
        ("k1:AAAA", "32 bytes"),
        (f"a b:{NEW.to_b64()}", "key id"),
        (f"k1:{NEW.to_b64()},k1:{OLD.to_b64()}", "twice"),
    ],
    ids=["empty", "no colon", "bad base64", "short key", "bad id", "twice"],  # no key in ids
)
def test_bad_rings_are_named_without_a_key(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as raised:
        KeyRing.parse(text)
    assert NEW.to_b64() not in str(raised.value) and OLD.to_b64() not in str(raised.value)


def test_either_setting_form() -> None:
    assert KeyRing.from_setting(NEW.to_b64()).ids == ("default",)
    assert KeyRing.from_setting(f"k1:{NEW.to_b64()},default:{OLD.to_b64()}").active_id == "k1"
    assert "raw" not in repr(KeyRing.single(NEW)) and NEW.to_b64() not in repr(KeyRing.single(NEW))


def test_the_check_value_tells_keys_apart_and_shows_nothing_of_them() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    ring = KeyRing((("k2", a), ("k1", b)))
    assert ring.check_value() == KeyRing.single(a, "k2").check_value()  # the active key's
    assert ring.check_value() == KeyRing.single(a, "other-id").check_value()  # by bytes only
    assert ring.check_value() != KeyRing.single(b, "k2").check_value()
    assert len(ring.check_value()) == 32
    for key in (a, b):
        assert key.to_b64() not in ring.check_value() and key.raw.hex() not in ring.check_value()
