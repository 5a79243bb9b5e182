"""Signed OTA commands: ECDSA P-256 over SHA-256, keys as PEM files.

The wire form of a command (the MQTT payload, the Notehub environment variable's value) is one line of
ASCII JSON, built byte for byte as

    {"cmd":<C>,"sig":"<S>"}

- `<C>` is the command's canonical serialisation: the JSON object with its keys sorted (by code point),
  no whitespace (separators `,` and `:`), non-ASCII characters escaped as `\\uXXXX` (so the bytes are
  ASCII), values only strings and integers (no floats, booleans or nested values). This is
  `json.dumps(command, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`.
- `<S>` is the standard base64 (RFC 4648, with padding) of the ECDSA P-256 signature over SHA-256 of the
  bytes `<C>`, in ASN.1 DER (`SEQUENCE { INTEGER r, INTEGER s }`), the form `mbedtls_pk_verify` and
  `mbedtls_ecdsa_read_signature` take directly.

The signature covers exactly the bytes between `{"cmd":` and `,"sig":"`: a device never re-serialises
JSON to verify; it checks the frame (prefix, suffix), verifies those bytes, and only then parses them.
firmware/ota-verify is the reference verifier in C.

>>> key = generate_private_key()
>>> wire = sign_command({"version": "1.2.0", "device": "dev-1", "expires": 2000000000}, key)
>>> wire[:52]
b'{"cmd":{"device":"dev-1","expires":2000000000,"versi'
>>> verify_command(wire, key.public_key())["version"]
'1.2.0'
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PREFIX = b'{"cmd":'
SEPARATOR = b',"sig":"'
SUFFIX = b'"}'


class SignatureError(ValueError):
    """A command that is malformed or whose signature does not verify."""


def canonical_bytes(command: Mapping[str, Any]) -> bytes:
    """The canonical serialisation that is signed (see the module docstring)."""
    for key, value in command.items():
        if not isinstance(key, str):
            raise TypeError(f"command keys must be strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"command value {key}={value!r}: only strings and integers are signed")
    return json.dumps(dict(command), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_command(command: Mapping[str, Any], key: ec.EllipticCurvePrivateKey) -> bytes:
    """The wire form `{"cmd":<canonical>,"sig":"<base64 DER>"}` of `command`, signed with `key`."""
    body = canonical_bytes(command)
    signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
    return PREFIX + body + SEPARATOR + base64.b64encode(signature) + SUFFIX


def verify_command(wire: bytes, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The command in `wire` when its signature verifies; SignatureError otherwise (the server-side twin of
    the device's check, for tests and tools: it checks the signature only, not expiry or device)."""
    if not (wire.startswith(PREFIX) and wire.endswith(SUFFIX)):
        raise SignatureError('not a signed command: expected {"cmd":...,"sig":"..."}')
    cut = wire.rfind(SEPARATOR)
    if cut < len(PREFIX):
        raise SignatureError("no signature")
    body = wire[len(PREFIX) : cut]
    try:
        signature = base64.b64decode(wire[cut + len(SEPARATOR) : -len(SUFFIX)], validate=True)
        public_key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, InvalidSignature) as exc:
        raise SignatureError("signature does not verify") from exc
    return json.loads(body)


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A new P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def write_key_pair(key: ec.EllipticCurvePrivateKey, private_path: Path, public_path: Path) -> None:
    """Write the private key (PKCS#8 PEM, mode 0600, never overwriting) and its public key (SPKI PEM)."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM: what the firmware embeds (mbedtls_pk_parse_public_key reads it)."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in the PEM file `path`; ValueError naming the file when it is not one."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    return _p256(key, path)


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The P-256 public key in the PEM file `path`."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the public key: {exc.strerror}") from None
    return _p256(key, path)


def _p256(key: Any, path: Path) -> Any:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not a P-256 (secp256r1) key")
    return key
