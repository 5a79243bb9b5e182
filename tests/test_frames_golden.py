"""The shared golden vectors (encoded independently of this project) decode exactly, by API and by CLI;
through the API with the C routines and with the numpy fallback (the `decoder` fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.frames import Registry, decode_messages, encode_frames

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "frames-v1.jsonl"
RECEIVED = 1_795_000_000


def _vectors() -> list[dict]:
    if not GOLDEN.is_file():
        pytest.fail(f"golden vectors not found at {GOLDEN}: the repo must sit beside shared/")
    return [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]


VECTORS = _vectors()


def _reported(message: bytes, registry: Registry) -> list[dict]:
    result = decode_messages([message], ["golden"], [RECEIVED], registry)
    items = [
        (off, {"ok": rec})
        for batch in result.batches.values()
        for off, rec in zip(batch.offset.tolist(), batch.records(), strict=True)
    ]
    items += [(r.offset, {"reject": r.reason}) for r in result.rejects]
    return [obj for _, obj in sorted(items, key=lambda item: item[0])]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["id"] for v in VECTORS])
def test_golden_vector_decodes_exactly(decoder: str, vector: dict) -> None:
    assert _reported(bytes.fromhex(vector["hex"]), Registry.builtin()) == vector["expect"]


def test_golden_vectors_cover_every_kind_of_outcome() -> None:
    outcomes = {next(iter(e)) if "ok" in e else e["reject"] for v in VECTORS for e in v["expect"]}
    assert {"ok", "bad_crc", "trailing_bytes", "invariant:conf_hist_sum"} <= outcomes


def test_all_golden_messages_in_one_batch_decode_as_separately(decoder: str) -> None:
    registry = Registry.builtin()
    messages = [bytes.fromhex(v["hex"]) for v in VECTORS]
    together = decode_messages(messages, ["g"] * len(messages), [RECEIVED] * len(messages), registry)
    assert together.frame_count == sum("ok" in e for v in VECTORS for e in v["expect"])
    assert sorted((r.message, r.reason) for r in together.rejects) == sorted(
        (i, e["reject"]) for i, v in enumerate(VECTORS) for e in v["expect"] if "reject" in e
    )


@pytest.mark.parametrize("vector", [v for v in VECTORS if all("ok" in e for e in v["expect"])], ids=lambda v: v["id"])
def test_python_packer_reencodes_golden_frames_byte_identical(vector: dict) -> None:
    schema = Registry.builtin().get(1)
    frames = [e["ok"] for e in vector["expect"]]
    columns = {key: [f[key] for f in frames] for key in frames[0]}
    rows = encode_frames(schema, columns)
    assert rows.tobytes().hex() == vector["hex"]


def test_cli_decode_hex_prints_the_golden_view() -> None:
    hex_input = "\n".join(v["hex"] for v in VECTORS) + "\n"
    out = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "decode", "--hex", "--received-at", str(RECEIVED)],
        input=hex_input,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    expected = [
        {"message": i, "ok": True, "frame": e["ok"]}
        if "ok" in e
        else {"message": i, "ok": False, "reason": e["reject"]}
        for i, v in enumerate(VECTORS)
        for e in v["expect"]
    ]
    assert lines == expected


def test_cli_decode_binary_files_and_summary(tmp_path: Path) -> None:
    paths = []
    for v in VECTORS:
        path = tmp_path / f"{v['id']}.bin"
        path.write_bytes(bytes.fromhex(v["hex"]))
        paths.append(str(path))
    out = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "decode", "--summary", "--received-at", str(RECEIVED), *paths],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == {
        "messages": 7,
        "frames_ok": 13,
        "rejected": {"bad_crc": 1, "invariant:conf_hist_sum": 1, "trailing_bytes": 1},
    }


def test_cli_decode_unreadable_input_exits_non_zero(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "decode", str(tmp_path / "nope.bin")], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "cannot read" in missing.stderr
    bad_hex = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "decode", "--hex"], input="zz\n", capture_output=True, text=True
    )
    assert bad_hex.returncode != 0 and "not a hex string" in bad_hex.stderr


def test_time_in_future_uses_the_receive_time(decoder: str) -> None:
    registry = Registry.builtin()
    message = bytes.fromhex(VECTORS[0]["hex"])
    window_start = VECTORS[0]["expect"][0]["ok"]["window_start"]
    early = window_start - 24 * 3600 - 1
    result = decode_messages([message, message], ["a", "b"], np.array([early, early + 1]), registry)
    assert [r.reason for r in result.rejects] == ["time_in_future"]
    assert result.rejects[0].message == 0 and result.frame_count == 1
