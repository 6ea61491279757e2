"""Standard Webhooks signatures, signing secrets, and their encryption at rest.

Signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the key is the base64-decoded
part of the secret after ``whsec_``; the header value is ``v1,<base64 HMAC-SHA256>``, several
signatures separated by a space (during a secret rotation both secrets sign). Signing is the
reference ``standardwebhooks`` package's, so receivers verifying with it agree byte for byte.

Signing secrets must be usable for signing, so they cannot be hashed: they are encrypted with
a key from settings (HMAC-SHA256 in counter mode as the key stream, then HMAC-SHA256 over nonce
and ciphertext; standard library only). A database dump without the key reveals no secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

import standardwebhooks

from domains.shared.errors import Internal

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_BYTES = 32
_NONCE = 16
_TAG = 16
_BOX_VERSION = "v1."


def new_secret() -> str:
    """Returns a new signing secret ``whsec_<base64 of 32 random bytes>``.

    Returns:
        The secret.
    """
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """Returns the HMAC key of a secret (the base64-decoded part after ``whsec_``).

    Args:
        secret: A ``whsec_...`` secret.

    Returns:
        The key bytes.
    """
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Signs one request.

    Args:
        secret: The endpoint's ``whsec_...`` secret.
        msg_id: ``webhook-id`` header value.
        timestamp: ``webhook-timestamp`` header value (Unix seconds).
        body: The exact request body.

    Returns:
        ``v1,<base64 signature>``.
    """
    # The reference implementation signs (and its users verify); it reads the whsec_ prefix.
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return standardwebhooks.Webhook(secret).sign(msg_id, when, body)


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Returns the ``webhook-signature`` header: one signature per secret, space separated.

    Args:
        secrets_: Current secret first, then a previous one still in its grace period.
        msg_id: ``webhook-id``.
        timestamp: ``webhook-timestamp``.
        body: Request body.

    Returns:
        The header value.
    """
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)


_OPENED_CACHE = 4096
"""Opened secrets a :class:`SecretBox` keeps (one or two per endpoint in use)."""


class SecretBox:
    """Encrypts signing secrets at rest with a key from settings."""

    def __init__(self, key: str) -> None:
        """Derives the encryption and authentication keys.

        Args:
            key: The settings key (any length; stretched with SHA-256).
        """
        root = hashlib.sha256(key.encode()).digest()
        self._enc = hmac.new(root, b"conveyor-webhooks-enc", hashlib.sha256).digest()
        self._mac = hmac.new(root, b"conveyor-webhooks-mac", hashlib.sha256).digest()
        # Every delivery signs with its endpoint's secret: opened once per sealed value (a
        # rotation seals a new one), not once per request.
        self._opened: dict[str, str] = {}

    def _stream(self, nonce: bytes, length: int) -> bytes:
        blocks = []
        for counter in range((length + 31) // 32):
            block = nonce + counter.to_bytes(8, "big")
            blocks.append(hmac.new(self._enc, block, hashlib.sha256).digest())
        return b"".join(blocks)[:length]

    def seal(self, plaintext: str) -> str:
        """Encrypts a secret.

        Args:
            plaintext: The secret.

        Returns:
            ``v1.<base64url(nonce | ciphertext | tag)>``.
        """
        data = plaintext.encode()
        nonce = secrets.token_bytes(_NONCE)
        cipher = bytes(a ^ b for a, b in zip(data, self._stream(nonce, len(data)), strict=True))
        tag = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()[:_TAG]
        return _BOX_VERSION + base64.urlsafe_b64encode(nonce + cipher + tag).decode()

    def open(self, sealed: str) -> str:
        """Decrypts a secret sealed by :meth:`seal`.

        Args:
            sealed: The stored value.

        Returns:
            The secret.

        Raises:
            Internal: If the value was not sealed with this key (the key setting changed).
        """
        opened = self._opened.get(sealed)
        if opened is None:
            opened = self._open(sealed)
            if len(self._opened) >= _OPENED_CACHE:
                self._opened.clear()  # bounded; the endpoints in use fill it again
            self._opened[sealed] = opened
        return opened

    def _open(self, sealed: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(sealed.removeprefix(_BOX_VERSION))
        except ValueError:
            raise Internal("a stored webhook secret is corrupt", reason="SECRET_CORRUPT") from None
        nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        expected = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()[:_TAG]
        if not sealed.startswith(_BOX_VERSION) or not hmac.compare_digest(tag, expected):
            raise Internal(
                "a stored webhook secret does not decrypt: was"
                " CONVEYOR_WEBHOOKS__SECRET_ENCRYPTION_KEY changed?",
                reason="SECRET_KEY_MISMATCH",
            )
        return bytes(
            a ^ b for a, b in zip(cipher, self._stream(nonce, len(cipher)), strict=True)
        ).decode()
