"""The device-side verifier (firmware/ota-verify, C99 + mbedTLS) against commands signed by the server.

`make test` builds the verifier and runs its C unit tests (under ASan/UBSan); then each command signed
here by `fleetwatch.actions.signing` (the shape `rollout.command` gives it) goes through the C tool as a
device would check it: good, tampered, expired, signed with another key, for another device, replayed.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from fleetwatch.actions.rollout import Artifact, Plan, command
from fleetwatch.actions.signing import generate_private_key, public_pem, sign_command, verify_command

ROOT = Path(__file__).resolve().parents[1] / "firmware" / "ota-verify"
TOOL = ROOT / "build" / "ota_verify_tool"
NOW = 1_795_000_000
PLAN = Plan(
    kind="firmware",
    target=Artifact("1.4.0", "https://updates.example/fw/1.4.0.bin", "ab" * 32),
    baseline=Artifact("1.3.2", "https://updates.example/fw/1.3.2.bin", "cd" * 32),
    stages=(5.0, 100.0),
    control_pct=5.0,
    bake_s=21_600,
)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds the C verifier and runs its unit tests; a directory for the public keys given to the tool."""
    build = subprocess.run(["make", "-C", str(ROOT), "test"], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "all tests passed" in build.stdout
    return tmp_path_factory.mktemp("keys")


def _verify(
    key_dir: Path, key: ec.EllipticCurvePrivateKey, wire: bytes, device: str, now: int = NOW, last_issued: int = 0
) -> tuple[str, dict]:
    pem = key_dir / f"{id(key)}.pem"
    pem.write_bytes(public_pem(key.public_key()))
    done = subprocess.run(
        [str(TOOL), str(pem), device, str(now), str(last_issued)], input=wire, capture_output=True, timeout=30
    )
    lines = done.stdout.decode().split("\n")[:-1]
    assert lines, done.stderr.decode()
    fields = dict(line.split("=", 1) for line in lines[1:])
    assert done.returncode == ["ok", "malformed", "bad_signature", "wrong_device", "expired", "replayed"].index(
        lines[0]
    )
    return lines[0], fields


def test_server_signed_commands(key_dir: Path) -> None:
    key, other = generate_private_key(), generate_private_key()
    cmd = command(PLAN, "fw-1.4.0", "dev-00042", "target", NOW, ttl_s=3600)
    wire = sign_command(cmd, key)
    assert verify_command(wire, key.public_key()) == cmd

    verdict, fields = _verify(key_dir, key, wire, "dev-00042")
    assert verdict == "ok"
    assert fields == {
        "device": "dev-00042",
        "version": "1.4.0",
        "rollback_version": "1.3.2",
        "url": PLAN.target.url,
        "sha256": PLAN.target.sha256,
        "rollout_id": "fw-1.4.0",
        "nonce": cmd["nonce"],
        "issued": str(NOW),
        "expires": str(NOW + 3600),
    }

    tampered = wire.replace(b'"version":"1.4.0"', b'"version":"1.4.1"')
    assert tampered != wire
    assert _verify(key_dir, key, tampered, "dev-00042")[0] == "bad_signature"
    assert _verify(key_dir, key, sign_command(cmd, other), "dev-00042")[0] == "bad_signature"
    assert _verify(key_dir, key, wire, "dev-00042", now=NOW + 3600)[0] == "expired"
    assert _verify(key_dir, key, wire, "dev-00042", now=NOW + 3599)[0] == "ok"
    assert _verify(key_dir, key, wire, "dev-00043")[0] == "wrong_device"
    assert _verify(key_dir, key, wire, "dev-00042", last_issued=NOW)[0] == "replayed"
    assert _verify(key_dir, key, wire[:-1], "dev-00042")[0] == "malformed"


def test_model_and_fleet_wide_commands(key_dir: Path) -> None:
    key = generate_private_key()
    plan = Plan("model", Artifact("2449536076"), Artifact("2827"), (5.0,), 5.0, 3600)
    cmd = command(plan, "model-x", "*", "baseline", NOW, ttl_s=60)
    verdict, fields = _verify(key_dir, key, sign_command(cmd, key), "any-device")
    assert verdict == "ok"
    assert fields["model_id"] == "2827" and fields["rollback_model_id"] == "2827" and fields["url"] == ""


def test_escaped_strings_round_trip(key_dir: Path) -> None:
    """Quotes, backslashes, slashes and control characters (\\uXXXX) as Python's canonical JSON escapes them
    (no newline: the tool prints one field per line)."""
    key = generate_private_key()
    rng = random.Random(7)
    alphabet = 'ab/\\"\t\r\x01\x1f }{:,' + "0123456789"
    for _ in range(25):
        url = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        cmd = {"device": "d", "expires": NOW + 1, "issued": NOW, "url": url}
        verdict, fields = _verify(key_dir, key, sign_command(cmd, key), "d")
        assert verdict == "ok" and fields["url"] == url
