"""`mcp_hub.keyring`: generation, persistence, permissions, the JWKS document, rotation and grace."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dedalus_labs.lib.crypto import encrypt_credentials, jwk_to_public_key

from mcp_hub import cli
from mcp_hub.envelopes import open_envelope
from mcp_hub.errors import ConfigError, CredentialsInvalid
from mcp_hub.keyring import HubKey, Keyring

B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
SECRET = "sk-keyring-test-7f1c"
DAY = 24 * 3600.0


class Clock:
    """Wall-clock time the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def seal(key: HubKey) -> str:
    """An envelope made by the Dedalus SDK's own code for `key`'s published JWK."""
    plaintext = {"type": "api_key", "api_key": SECRET, "header_name": "Authorization",
                 "header_template": "Bearer {api_key}", "provider_metadata": None}
    return encrypt_credentials(jwk_to_public_key(key.jwk()), plaintext)


def opens(keyring: Keyring, envelope: str) -> bool:
    try:
        secret = open_envelope(envelope, keyring.decryption_keys(), server="s", connection="c")
    except CredentialsInvalid:
        return False
    return secret.secret.get_secret_value() == SECRET


def pem_file(path: Path, bits: int = 2048) -> rsa.RSAPrivateKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    return private


async def test_generated_key_is_owner_only_and_survives_restart(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "encryption-keys"
    old_umask = os.umask(0)  # the permissions must not depend on a lenient umask
    try:
        keyring = Keyring(folder, bits=2048).open()
        assert list(folder.iterdir()) == []  # opening generates nothing
        key = await keyring.published()
    finally:
        os.umask(old_umask)
    assert mode(folder) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted([f"{key.kid}.pem", "keyring.json"])
    assert all(mode(folder / name) == 0o600 for name in files)
    again = Keyring(folder, bits=2048).open()
    assert (await again.published()).kid == key.kid
    assert len(list(folder.glob("*.pem"))) == 1


async def test_loose_permissions_are_tightened_on_open(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    key = await Keyring(folder, bits=2048).open().published()
    folder.chmod(0o755)
    (folder / f"{key.kid}.pem").chmod(0o644)
    Keyring(folder, bits=2048).open()
    assert mode(folder) == 0o700 and mode(folder / f"{key.kid}.pem") == 0o600


async def test_jwks_publishes_exactly_one_encryption_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys").open()  # default size
    document = await keyring.jwks()
    (jwk,) = document["keys"]
    assert set(jwk) == {"kty", "use", "alg", "kid", "n", "e"}
    assert (jwk["kty"], jwk["use"], jwk["alg"]) == ("RSA", "enc", "RSA-OAEP-256")
    assert all(B64URL.match(jwk[name]) for name in ("kid", "n", "e"))  # base64url, no padding
    n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=" * (-len(jwk["n"]) % 4)), "big")
    assert n.bit_length() == 3072 and jwk["e"] == "AQAB"
    assert jwk_to_public_key(jwk).key_size == 3072  # the SDK's own check (>= 2048 bits) accepts it
    private = (await keyring.published()).private.private_numbers()
    assert str(private.d) not in json.dumps(document) and str(private.p) not in json.dumps(document)


async def test_repr_and_pickle_never_show_private_material(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys", bits=2048).open()
    key = await keyring.published()
    numbers = key.private.private_numbers()
    pem = (tmp_path / "keys" / f"{key.kid}.pem").read_text()
    for text in (repr(key), str(key), repr(keyring), repr(keyring.decryption_keys())):
        assert key.kid in text
        assert "PRIVATE KEY" not in text and pem[40:80] not in text
        assert str(numbers.d) not in text and hex(numbers.d)[2:20] not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


async def test_rotated_key_decrypts_during_grace_then_is_deleted(tmp_path: Path) -> None:
    clock = Clock()
    folder = tmp_path / "keys"
    keyring = Keyring(folder, bits=2048, grace=DAY, clock=clock).open()
    old = await keyring.published()
    envelope = seal(old)
    assert opens(keyring, envelope)

    clock.now += 60
    new = keyring.rotate()
    assert new.kid != old.kid and (await keyring.published()).kid == new.kid
    assert [k["kid"] for k in (await keyring.jwks())["keys"]] == [new.kid]  # only the new key is published
    assert opens(keyring, envelope)  # in grace
    assert opens(keyring, seal(new))
    index = json.loads((folder / "keyring.json").read_text())
    assert index["current"] == new.kid and index["keys"][old.kid]["retired"] == clock.now

    clock.now += DAY - 1
    assert opens(Keyring(folder, bits=2048, grace=DAY, clock=clock).open(), envelope)  # the grace survives a restart
    assert opens(keyring, envelope)

    clock.now += 1
    assert not opens(keyring, envelope)  # past the grace period
    Keyring(folder, bits=2048, grace=DAY, clock=clock).open()  # the next open deletes it
    assert not (folder / f"{old.kid}.pem").exists()
    assert old.kid not in json.loads((folder / "keyring.json").read_text())["keys"]
    assert opens(keyring, seal(new))


async def test_max_age_rotates_the_published_key(tmp_path: Path) -> None:
    clock = Clock()
    keyring = Keyring(tmp_path / "keys", bits=2048, max_age=100, grace=DAY, clock=clock).open()
    first = await keyring.published()
    clock.now += 99
    assert (await keyring.published()).kid == first.kid
    clock.now += 1
    second = await keyring.published()
    assert second.kid != first.kid
    assert [k.kid for k in keyring.decryption_keys()] == [second.kid, first.kid]


async def test_rotation_by_another_process_is_picked_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = Keyring(data / "encryption-keys", bits=2048).open()
    old = await running.published()
    envelope = seal(old)
    assert cli.main(["rotate-encryption-key", "--data-dir", str(data)]) == 0
    new = await running.published()
    assert new.kid != old.kid
    assert opens(running, envelope) and opens(running, seal(new))


async def test_configured_key_is_published_and_not_rotated(tmp_path: Path) -> None:
    path = tmp_path / "hub-key.pem"
    private = pem_file(path)
    folder = tmp_path / "keys"
    keyring = Keyring(folder, configured=path).open()
    key = await keyring.published()
    assert key.private.private_numbers() == private.private_numbers()
    assert list(folder.glob("*.pem")) == []  # nothing generated, nothing copied
    assert opens(keyring, seal(key))
    with pytest.raises(ConfigError, match="replace that file"):
        keyring.rotate()


async def test_switching_to_a_configured_key_keeps_the_generated_one_in_grace(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    generated = await Keyring(folder, bits=2048).open().published()
    envelope = seal(generated)
    path = tmp_path / "hub-key.pem"
    pem_file(path)
    keyring = Keyring(folder, configured=path).open()
    assert (await keyring.published()).kid != generated.kid
    assert opens(keyring, envelope)


@pytest.mark.parametrize("content", ["small", "garbage", "missing"])
def test_unusable_configured_key_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "hub-key.pem"
    if content == "small":
        private = pem_file(path, bits=1024)
        expected = "at least 2048 bits"
    elif content == "garbage":
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        expected = "not an unencrypted PEM private key"
    else:
        expected = "cannot read"
    with pytest.raises(ConfigError, match=expected) as caught:
        Keyring(tmp_path / "keys", configured=path).open()
    if content == "small":
        assert str(private.private_numbers().d) not in caught.value.message
    assert "not a key" not in caught.value.message


def test_corrupt_index_is_a_config_error(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "keyring.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a keyring index"):
        Keyring(folder).open()


def test_keys_below_2048_bits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2048 bits"):
        Keyring(tmp_path / "keys", bits=1024)
