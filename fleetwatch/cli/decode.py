"""`fleetwatch decode`: decode transport messages from files or stdin and print one JSON line per frame."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import click

from fleetwatch.cli.schema import load_registry, schema_dirs_option
from fleetwatch.frames import Registry, decode_messages

#: Messages decoded per batch: bounds memory on a large capture while keeping the decoder vectorised.
CHUNK = 50_000


@click.command("decode")
@click.argument("paths", nargs=-1, type=click.Path(allow_dash=True, dir_okay=False, path_type=Path))
@click.option("--hex", "as_hex", is_flag=True, help="Each input line is one message in hex (blank lines skipped).")
@click.option(
    "--received-at",
    type=int,
    default=None,
    metavar="UNIX",
    help="Receive time in Unix seconds for the time_in_future rule (default: now).",
)
@click.option("--device", default="-", show_default=True, help="Device id to attach (frames do not carry one).")
@click.option("--summary", is_flag=True, help="Print only counts: messages, frames ok, rejects by reason.")
@schema_dirs_option
def command(
    paths: tuple[Path, ...],
    as_hex: bool,
    received_at: int | None,
    device: str,
    summary: bool,
    schema_dirs: tuple[Path, ...],
) -> None:
    """Decode telemetry frames.

    Each PATH (or - for stdin; stdin when no PATH) is a binary file holding one transport message. With
    --hex, every line of every input is one message in hex. Prints, in order, one JSON object per frame:
    {"message": i, "ok": true, "frame": {...}} or {"message": i, "ok": false, "reason": "..."}.
    Exits 0 unless the input cannot be read.
    """
    registry = load_registry(schema_dirs)
    received = int(time.time()) if received_at is None else received_at
    messages = _read_messages(paths or (Path("-"),), as_hex)
    counts: Counter[str] = Counter()
    first = 0
    while chunk := list(islice(messages, CHUNK)):
        for line in _decode_lines(chunk, first, device, received, registry, counts):
            if not summary:
                click.echo(line)
        first += len(chunk)
    if summary:
        ok = counts.pop("ok", 0)
        click.echo(json.dumps({"messages": first, "frames_ok": ok, "rejected": dict(sorted(counts.items()))}))


def _decode_lines(
    chunk: list[bytes], first: int, device: str, received: int, registry: Registry, counts: Counter[str]
) -> Iterator[str]:
    result = decode_messages(chunk, [device] * len(chunk), [received] * len(chunk), registry)
    items: list[tuple[int, int, dict]] = []
    for batch in result.batches.values():
        counts["ok"] += len(batch)
        for m, off, frame in zip(batch.message.tolist(), batch.offset.tolist(), batch.records(), strict=True):
            items.append((m, off, {"message": first + m, "ok": True, "frame": frame}))
    for reject in result.rejects:
        counts[reject.reason] += 1
        obj = {"message": first + reject.message, "ok": False, "reason": reject.reason}
        items.append((reject.message, reject.offset, obj))
    items.sort(key=lambda item: (item[0], item[1]))
    return (json.dumps(obj) for _, _, obj in items)


def _read_messages(paths: tuple[Path, ...], as_hex: bool) -> Iterator[bytes]:
    for path in paths:
        try:
            if as_hex:
                yield from _hex_lines(path)
            elif str(path) == "-":
                yield sys.stdin.buffer.read()
            else:
                yield path.read_bytes()
        except OSError as exc:
            raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


def _hex_lines(path: Path) -> Iterator[bytes]:
    stream = sys.stdin if str(path) == "-" else path.open(encoding="ascii", errors="replace")
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            yield bytes.fromhex(text)
        except ValueError:
            raise click.ClickException(f"{path}:{number}: not a hex string") from None
