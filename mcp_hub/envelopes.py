"""Encrypted credentials: opening PROTOCOL.md section 4 envelopes and binding them to one server.

An envelope is base64url (no padding) of::

    0x01 | RSA-OAEP(SHA-256, MGF1-SHA-256, no label) wrapped 32-byte AES key | 12-byte nonce
         | AES-256-GCM ciphertext + 16-byte tag (no AAD)

and its plaintext is compact JSON, one of::

    {"type": "api_key", "api_key", "header_name", "header_template", "provider_metadata"}
    {"type": "oauth2", "access_token", "token_type", "provider_metadata"}

A request carries envelopes inside one `mcp_servers` item, `credentials: {connection: envelope}`,
so an envelope can only ever reach the server it was attached to. There it binds like a
plaintext credential: by a connection name the registry entry declares, by the SDK's
`org-name` for server `org/name`, or, for a URL server, by the spec's `name` (as given, or
with `/` replaced by `-`, which is what the Dedalus SDK sends). Envelopes that bind to
nothing are ignored unopened. Delivery:

- HTTP servers get the envelope's header, `header_name: header_template` with `{api_key}`
  filled in (oauth2: `Authorization: <token_type> <access_token>`);
- registry connections also get the secret as one of their fields (the only field, else
  `api_key`, `token`, `key`, `secret` or `password`, else the first), so the entry's `env`
  templates (hosted stdio servers) and `headers` templates render it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, field_validator

from .credentials import Binding, Credential
from .errors import CredentialsInvalid
from .keyring import HubKey, Keyring
from .registry import Connection
from .resolution import Target

VERSION = 0x01
NONCE_LEN = 12
TAG_LEN = 16
AES_KEY_LEN = 32
MAX_ENVELOPE_CHARS = 64 * 1024
FIELD_PREFERENCE = ("api_key", "token", "key", "secret", "password")
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 header name / auth scheme
# Headers the hub's own transport owns; a credential may not replace them.
_RESERVED = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection", "upgrade", "te",
                       "trailer", "keep-alive", "accept", "accept-encoding", "mcp-session-id", "mcp-protocol-version",
                       "last-event-id", "cookie"})


def _no_controls(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return value


class _Plaintext(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    provider_metadata: dict[str, Any] | None = None  # informational; never used to reroute a server

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            _no_controls(value.get_secret_value())
        elif isinstance(value, str):
            _no_controls(value)
        return value


class ApiKeySecret(_Plaintext):
    """An `api_key` envelope's plaintext."""

    type: Literal["api_key"]
    api_key: SecretStr = Field(min_length=1)
    header_name: str = Field("Authorization", pattern=_TOKEN.pattern)
    header_template: str = "Bearer {api_key}"

    @field_validator("header_name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() in _RESERVED:
            raise ValueError("names a header the hub's transport owns")
        return value

    @field_validator("header_template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{api_key}" not in value:
            raise ValueError("must contain {api_key}")
        return value

    @property
    def secret(self) -> SecretStr:
        return self.api_key

    def header(self) -> tuple[str, str]:
        # A literal substitution, not str.format: the template is caller data.
        return self.header_name, self.header_template.replace("{api_key}", self.api_key.get_secret_value())


class OAuth2Secret(_Plaintext):
    """An `oauth2` envelope's plaintext."""

    type: Literal["oauth2"]
    access_token: SecretStr = Field(min_length=1)
    token_type: str = Field("Bearer", pattern=_TOKEN.pattern)

    @property
    def secret(self) -> SecretStr:
        return self.access_token

    def header(self) -> tuple[str, str]:
        return "Authorization", f"{self.token_type} {self.access_token.get_secret_value()}"


EnvelopeSecret = Annotated[ApiKeySecret | OAuth2Secret, Field(discriminator="type")]
_plaintext = TypeAdapter(EnvelopeSecret)


def open_envelope(envelope: Any, keys: list[HubKey], *, server: str, connection: str) -> ApiKeySecret | OAuth2Secret:
    """Decrypt and parse one envelope with the first of `keys` that opens it.

    Raises `CredentialsInvalid` naming the server and connection, never the envelope or its contents.
    """

    def invalid(why: str) -> CredentialsInvalid:
        return CredentialsInvalid(f"the encrypted credential {connection!r} for server {server!r} {why}",
                                  server=server, connection=connection)

    if not isinstance(envelope, str) or not 0 < len(envelope) <= MAX_ENVELOPE_CHARS or not _B64URL.fullmatch(envelope):
        raise invalid(f"is not a base64url envelope of at most {MAX_ENVELOPE_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(envelope + "=" * (-len(envelope) % 4))
    except (binascii.Error, ValueError):
        raise invalid("is not a base64url envelope") from None
    if raw[:1] != bytes([VERSION]):
        raise invalid(f"is not a version {VERSION} envelope")
    plaintext = _decrypt(raw, keys)
    if plaintext is None:
        # One answer for every failure (wrong key, tampered key, nonce, ciphertext or tag): no oracle.
        raise invalid("cannot be decrypted: it was altered, or made for another key "
                      "(the hub's key is published at /.well-known/jwks.json)")
    try:
        return _plaintext.validate_json(plaintext)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the plaintext"
        detail = "is not JSON" if first["type"] == "json_invalid" else f"has an invalid {where} ({first['type']})"
        raise invalid(f"decrypts, but {detail}") from None


def _decrypt(raw: bytes, keys: list[HubKey]) -> bytes | None:
    for key in keys:
        size = key.private.key_size // 8
        if len(raw) < 1 + size + NONCE_LEN + TAG_LEN:
            continue
        wrapped, nonce, sealed = raw[1:1 + size], raw[1 + size:1 + size + NONCE_LEN], raw[1 + size + NONCE_LEN:]
        try:
            aes_key = key.private.decrypt(wrapped, _OAEP)
        except ValueError:
            continue  # not this key's (or tampered); try the next one
        if len(aes_key) != AES_KEY_LEN:
            continue
        try:
            return AESGCM(aes_key).decrypt(nonce, sealed, None)
        except InvalidTag:
            return None
    return None


@dataclass(frozen=True)
class Unsealed:
    """One server's decrypted envelopes, ready to merge into its `Binding`."""

    credentials: list[Credential] = field(default_factory=list, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    raw: tuple[str, ...] = field(default=(), repr=False)  # the decrypted secrets, for scrubbing

    def apply(self, binding: Binding) -> Binding:
        """Add the envelope headers; fold them into the fingerprint (a digest, never the values)."""
        if not self.headers:
            return binding
        digest = hashlib.sha256(binding.fingerprint.encode())
        for name, value in sorted(self.headers.items()):
            digest.update(f"\0header\0{name.lower()}\0{value}".encode())
        # The envelope's header replaces a registry template's header of the same name (any case).
        overridden = {name.lower() for name in self.headers}
        kept = {name: value for name, value in binding.headers.items() if name.lower() not in overridden}
        return replace(binding, headers=kept | self.headers, fingerprint=digest.hexdigest()[:32],
                       raw=(*binding.raw, *self.raw))


def unseal(target: Target, keyring: Keyring) -> Unsealed:
    """Open the envelopes attached to `target` that bind to it; ignore the rest unopened."""
    attached = target.spec_credentials or {}
    if not attached:
        return Unsealed()
    keys: list[HubKey] | None = None
    credentials: list[Credential] = []
    headers: dict[str, str] = {}
    raw: list[str] = []
    for name, envelope in attached.items():
        connection, declared = _binds_to(target, name)
        if declared is None or (connection is None and target.version.kind == "stdio"):
            continue  # binds to nothing this server can be given
        if keys is None:
            keys = keyring.decryption_keys()
        secret = open_envelope(envelope, keys, server=target.name, connection=name)
        raw.append(secret.secret.get_secret_value())
        if connection is not None:
            values = {_field_for(connection): secret.secret}
            credentials.append(Credential(connection_name=declared, values=values))
        if target.version.kind != "stdio":
            header, value = secret.header()
            headers = {k: v for k, v in headers.items() if k.lower() != header.lower()} | {header: value}
    return Unsealed(credentials, headers, tuple(raw))


def _binds_to(target: Target, name: str) -> tuple[Connection | None, str | None]:
    """The registry connection (and its declared name) an envelope named `name` binds to.

    `(None, name)` means it binds to the server without a declared connection (header only).
    """
    entry = target.entry
    if entry is None:
        return None, (name if name in (target.name, target.name.replace("/", "-")) else None)
    if name in entry.connections:
        return entry.connections[name], name
    if name == entry.slug.replace("/", "-"):
        if len(entry.connections) == 1:
            declared, connection = next(iter(entry.connections.items()))
            return connection, declared
        if not entry.connections:
            return None, name
    return None, None


def _field_for(connection: Connection) -> str:
    """The connection field an envelope's single secret fills."""
    if len(connection.fields) == 1:
        return connection.fields[0]
    return next((f for f in FIELD_PREFERENCE if f in connection.fields), connection.fields[0])
