"""Frames: schema registry, batch decoder and packer. Pure; imports nothing else of fleetwatch."""

from fleetwatch.frames.decode import (
    REASONS,
    DecodeResult,
    FrameBatch,
    Reject,
    decode_buffer,
    decode_messages,
    format_fw_version,
    parse_fw_version,
)
from fleetwatch.frames.encode import encode_frames
from fleetwatch.frames.schema import Field, Invariant, Registry, Schema, SchemaError

__all__ = [
    "REASONS",
    "DecodeResult",
    "Field",
    "FrameBatch",
    "Invariant",
    "Registry",
    "Reject",
    "Schema",
    "SchemaError",
    "decode_buffer",
    "decode_messages",
    "encode_frames",
    "format_fw_version",
    "parse_fw_version",
]
