"""`mcp_hub.envelopes`: opening envelopes made by the Dedalus SDK, and binding them to one server."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from dedalus_labs.lib.crypto import encrypt_credentials, jwk_to_public_key

from mcp_hub.credentials import Credential, bind
from mcp_hub.envelopes import ApiKeySecret, OAuth2Secret, open_envelope, unseal
from mcp_hub.errors import CredentialError, CredentialsInvalid
from mcp_hub.keyring import Keyring
from mcp_hub.registry import Registry
from mcp_hub.resolution import ServerSpec, Target, resolve_one

from .dedalus_credentials import Connection, SecretValues

SECRET = "sk-envelope-test-9d2e41"
URL = "https://tools.example.test/mcp"
REGISTRY = Registry.from_data({"servers": {
    "test/stdio": {"connections": {"probe": {"fields": ["token"], "env": {"PROBE_TOKEN": "{token}"}}},
                   "versions": {"1.0.0": {"command": ["server"]}}},
    "test/remote": {"connections": {"api": {"fields": ["api_key"], "headers": {"X-Api-Key": "{api_key}"}}},
                    "versions": {"1.0.0": {"url": "https://remote.example.test/mcp"}}},
    "test/bare": {"versions": {"1.0.0": {"url": "https://bare.example.test/mcp"}}},
    "test/two": {"connections": {"github": {"fields": ["token"], "env": {"GH": "{token}"}},
                                 "slack": {"fields": ["token"], "env": {"SLACK": "{token}"}}},
                 "versions": {"1.0.0": {"command": ["server"]}}},
}})


@pytest.fixture
async def keyring(tmp_path: Path) -> Keyring:
    keyring = Keyring(tmp_path / "keys", bits=2048).open()
    await keyring.published()
    return keyring


def public(keyring: Keyring) -> Any:
    return jwk_to_public_key(keyring.decryption_keys()[0].jwk())


def sdk_envelope(keyring: Keyring, connection: str = "conn", secret: str = SECRET, **options: Any) -> str:
    """What the Dedalus SDK sends for `SecretValues(Connection(connection, ...), api_key=secret)`."""
    values = SecretValues(Connection(connection, secrets={"api_key": "KEY"}, **options), api_key=secret)
    return encrypt_credentials(public(keyring), values.values_for_encryption())


def raw_envelope(keyring: Keyring, plaintext: bytes) -> str:
    """The section 4 format built by hand, for plaintexts the SDK would never produce."""
    aes_key, nonce = os.urandom(32), os.urandom(12)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    body = b"\x01" + public(keyring).encrypt(aes_key, oaep) + nonce + AESGCM(aes_key).encrypt(nonce, plaintext, None)
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode()


def open_one(keyring: Keyring, envelope: Any) -> ApiKeySecret | OAuth2Secret:
    return open_envelope(envelope, keyring.decryption_keys(), server="srv", connection="conn")


def target(spec: dict[str, Any]) -> Target:
    return resolve_one(ServerSpec.model_validate(spec), REGISTRY)


def assert_invalid_and_silent(caught: pytest.ExceptionInfo[CredentialsInvalid], envelope: Any = None) -> None:
    error = caught.value
    assert error.code == "credentials_invalid" and error.server == "srv" and error.connection == "conn"
    text = json.dumps(error.to_entry()) + json.dumps(error.to_body()) + str(error) + repr(error)
    assert "'conn'" in error.message and "'srv'" in error.message
    assert SECRET not in text
    if isinstance(envelope, str) and len(envelope) >= 16:  # a long-enough piece to be recognisable
        assert envelope[:40] not in text and envelope[-40:] not in text


async def test_sdk_api_key_envelope_opens(keyring: Keyring) -> None:
    secret = open_one(keyring, sdk_envelope(keyring, auth_header_name="X-Api-Key", auth_header_format="token {api_key}"))
    assert isinstance(secret, ApiKeySecret)
    assert secret.header() == ("X-Api-Key", f"token {SECRET}")
    assert secret.secret.get_secret_value() == SECRET
    assert SECRET not in repr(secret) and SECRET not in str(secret)


async def test_sdk_default_header_is_bearer(keyring: Keyring) -> None:
    assert open_one(keyring, sdk_envelope(keyring)).header() == ("Authorization", f"Bearer {SECRET}")


async def test_oauth2_envelope_opens(keyring: Keyring) -> None:
    plaintext = {"type": "oauth2", "access_token": SECRET, "token_type": "DPoP", "provider_metadata": {"scope": "x"}}
    secret = open_one(keyring, encrypt_credentials(public(keyring), plaintext))
    assert isinstance(secret, OAuth2Secret)
    assert secret.header() == ("Authorization", f"DPoP {SECRET}")
    assert SECRET not in repr(secret)


def _flip(envelope: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(envelope + "=" * (-len(envelope) % 4)))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("where", ["version", "wrapped key", "nonce", "ciphertext", "tag"])
async def test_any_tampered_byte_is_credentials_invalid(keyring: Keyring, where: str) -> None:
    envelope = sdk_envelope(keyring)
    size = 2048 // 8
    index = {"version": 0, "wrapped key": 1 + size // 2, "nonce": 1 + size + 5, "ciphertext": 1 + size + 12 + 3,
             "tag": -1}[where]
    tampered = _flip(envelope, index)
    with pytest.raises(CredentialsInvalid) as caught:
        open_one(keyring, tampered)
    assert_invalid_and_silent(caught, tampered)


@pytest.mark.parametrize("envelope", [None, 42, "", "not base64url!", "AQ", "A" * 70_000, {"api_key": SECRET}])
async def test_malformed_envelopes_are_credentials_invalid(keyring: Keyring, envelope: Any) -> None:
    with pytest.raises(CredentialsInvalid) as caught:
        open_one(keyring, envelope)
    assert_invalid_and_silent(caught, envelope)


async def test_truncated_envelope_is_credentials_invalid(keyring: Keyring) -> None:
    envelope = sdk_envelope(keyring)
    with pytest.raises(CredentialsInvalid) as caught:
        open_one(keyring, envelope[:300])
    assert_invalid_and_silent(caught, envelope)


async def test_envelope_for_another_hub_is_credentials_invalid(keyring: Keyring, tmp_path: Path) -> None:
    other = Keyring(tmp_path / "other", bits=2048).open()
    await other.published()
    envelope = sdk_envelope(other)
    with pytest.raises(CredentialsInvalid, match="made for another key") as caught:
        open_one(keyring, envelope)
    assert_invalid_and_silent(caught, envelope)


@pytest.mark.parametrize(("plaintext", "why"), [
    (b"not json " + SECRET.encode(), "is not JSON"),
    (json.dumps([SECRET]).encode(), "invalid"),
    (json.dumps({"type": "password", "password": SECRET}).encode(), "invalid"),
    (json.dumps({"type": "api_key"}).encode(), "api_key"),
    (json.dumps({"type": "api_key", "api_key": SECRET, "header_template": "Bearer"}).encode(), "header_template"),
    (json.dumps({"type": "api_key", "api_key": SECRET, "header_name": "Host"}).encode(), "header_name"),
    (json.dumps({"type": "api_key", "api_key": SECRET, "header_name": "Bad Header"}).encode(), "header_name"),
    (json.dumps({"type": "api_key", "api_key": f"{SECRET}\r\nX-Evil: 1"}).encode(), "api_key"),
    (json.dumps({"type": "oauth2", "access_token": SECRET, "token_type": "Bearer x"}).encode(), "token_type"),
])
async def test_bad_plaintext_is_credentials_invalid(keyring: Keyring, plaintext: bytes, why: str) -> None:
    with pytest.raises(CredentialsInvalid, match=why) as caught:
        open_one(keyring, raw_envelope(keyring, plaintext))
    assert_invalid_and_silent(caught)


async def test_header_template_is_not_a_format_string(keyring: Keyring) -> None:
    plaintext = {"type": "api_key", "api_key": SECRET, "header_name": "X-Key",
                 "header_template": "{api_key} {api_key.__class__} {0}", "provider_metadata": None}
    secret = open_one(keyring, encrypt_credentials(public(keyring), plaintext))
    assert secret.header() == ("X-Key", f"{SECRET} {{api_key.__class__}} {{0}}")


# -- binding to one server ----------------------------------------------------------------------

async def test_hosted_server_gets_the_secret_through_its_env_template(keyring: Keyring) -> None:
    for name in ("probe", "test-stdio"):  # the declared connection, and the SDK's org-name convention
        server = target({"slug": "test/stdio", "name": "test/stdio", "credentials": {name: sdk_envelope(keyring, name)}})
        unsealed = unseal(server, keyring)
        assert unsealed.headers == {}  # stdio: no HTTP headers
        binding = unsealed.apply(bind(server.entry, server.name, unsealed.credentials))
        assert binding.env == {"PROBE_TOKEN": SECRET} and binding.headers == {}


async def test_remote_registry_server_gets_the_envelope_header_and_its_templates(keyring: Keyring) -> None:
    server = target({"slug": "test/remote", "credentials": {"api": sdk_envelope(keyring, "api")}})
    unsealed = unseal(server, keyring)
    binding = unsealed.apply(bind(server.entry, server.name, unsealed.credentials))
    assert binding.headers == {"X-Api-Key": SECRET, "Authorization": f"Bearer {SECRET}"}


async def test_envelope_header_replaces_a_template_header_of_the_same_name(keyring: Keyring) -> None:
    envelope = sdk_envelope(keyring, "api", auth_header_name="x-api-key", auth_header_format="Key {api_key}")
    server = target({"slug": "test/remote", "credentials": {"api": envelope}})
    unsealed = unseal(server, keyring)
    binding = unsealed.apply(bind(server.entry, server.name, unsealed.credentials))
    assert binding.headers == {"x-api-key": f"Key {SECRET}"}


async def test_registry_server_without_connections_binds_the_sdk_name(keyring: Keyring) -> None:
    server = target({"slug": "test/bare", "credentials": {"test-bare": sdk_envelope(keyring, "test-bare")}})
    assert unseal(server, keyring).headers == {"Authorization": f"Bearer {SECRET}"}


@pytest.mark.parametrize(("name", "connection"), [
    ("mine", "mine"),  # the spec's name
    (URL, URL),  # the name as given
    (URL, URL.replace("/", "-")),  # what the Dedalus SDK sends for a URL server
])
async def test_url_server_binds_the_connection_named_by_its_spec(keyring: Keyring, name: str, connection: str) -> None:
    server = target({"url": URL, "name": name, "credentials": {connection: sdk_envelope(keyring, connection)}})
    unsealed = unseal(server, keyring)
    assert unsealed.credentials == []
    assert unsealed.apply(bind(None, server.name, [])).headers == {"Authorization": f"Bearer {SECRET}"}


async def test_unmatched_envelopes_go_nowhere_and_stay_unopened(keyring: Keyring) -> None:
    garbage = "AQ" + "A" * 400  # would be credentials_invalid if anything tried to open it
    cases = [
        target({"url": URL, "name": "mine", "credentials": {"other": garbage}}),
        target({"slug": "test/remote", "credentials": {"test-bare": garbage, "github": garbage}}),
        target({"slug": "test/two", "credentials": {"test-two": garbage}}),  # org-name is ambiguous with two connections
        target({"slug": "test/stdio", "credentials": {"stdio": garbage}}),
    ]
    for server in cases:
        unsealed = unseal(server, keyring)
        assert unsealed.credentials == [] and unsealed.headers == {}


async def test_required_connection_without_a_matching_envelope_is_missing_credentials(keyring: Keyring) -> None:
    server = target({"slug": "test/two", "credentials": {"github": sdk_envelope(keyring, "github")}})
    unsealed = unseal(server, keyring)
    with pytest.raises(CredentialError) as caught:
        bind(server.entry, server.name, unsealed.credentials)
    assert caught.value.code == "missing_credentials" and "'slack'" in caught.value.message


async def test_envelope_beats_a_plaintext_credential_for_the_same_connection(keyring: Keyring) -> None:
    server = target({"slug": "test/stdio", "credentials": {"probe": sdk_envelope(keyring, "probe")}})
    unsealed = unseal(server, keyring)
    plaintext = Credential.model_validate({"connection_name": "probe", "values": {"token": "plain"}})
    assert bind(server.entry, server.name, [plaintext, *unsealed.credentials]).env == {"PROBE_TOKEN": SECRET}


async def test_fingerprint_covers_the_decrypted_values(keyring: Keyring) -> None:
    def fingerprint(spec: dict[str, Any], secret: str) -> str:
        name = next(iter(spec.get("credentials") or {"x": None}))
        server = target({**spec, "credentials": {name: sdk_envelope(keyring, name, secret)}})
        unsealed = unseal(server, keyring)
        return unsealed.apply(bind(server.entry, server.name, unsealed.credentials)).fingerprint

    for spec in ({"slug": "test/stdio", "credentials": {"probe": None}}, {"url": URL, "name": "mine",
                                                                          "credentials": {"mine": None}}):
        one, same, other = fingerprint(spec, SECRET), fingerprint(spec, SECRET), fingerprint(spec, SECRET + "2")
        assert one == same  # a fresh envelope of the same secret reuses the session
        assert one != other and one  # another secret never shares it
        assert SECRET not in one


async def test_a_bad_envelope_names_its_server(keyring: Keyring) -> None:
    server = target({"slug": "test/stdio", "name": "notes-1", "credentials": {"probe": _flip(sdk_envelope(keyring), -1)}})
    with pytest.raises(CredentialsInvalid) as caught:
        unseal(server, keyring)
    assert caught.value.server == "notes-1" and caught.value.connection == "probe"
