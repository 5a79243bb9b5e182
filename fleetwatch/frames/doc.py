"""A schema as a Markdown table (docs, `fleetwatch schema show`) and as JSON."""

from __future__ import annotations

from typing import Any

from fleetwatch.frames.schema import ENVELOPE_LEN, Schema


def schema_markdown(schema: Schema) -> str:
    """The body layout as WIRE-FORMAT.md writes it, plus the decoded names, roles and invariants."""
    lines = [
        f"## Body schema {schema.id}: `{schema.name}` ({schema.body_len} bytes)",
        "",
        schema.description,
        "",
        f"Frame length: {ENVELOPE_LEN} + {schema.body_len} + 2 = {schema.frame_len} bytes.",
        "",
        "| offset | type | count | field | decoded as | unit / scale | role | meaning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for offset, f in schema.field_offsets():
        scale = f"× {f.scale:g}" if f.scale is not None else ""
        unit = " ".join(p for p in (f.unit, scale) if p)
        meaning = f.doc
        if f.bits:
            meaning += "; " + ", ".join(f"bit{b} {name}" for name, b in sorted(f.bits.items(), key=lambda x: x[1]))
        if f.bin_edges:
            meaning += f"; bin edges {', '.join(f'{e:g}' for e in f.bin_edges)}"
        lines.append(
            f"| {offset} | {f.type} | {f.count} | `{f.name}` | `{f.decoded}` | {unit} | {f.role or ''} | {meaning} |"
        )
    lines += ["", "Invariants (a frame that breaks one is rejected as `invariant:<name>`):", ""]
    lines.append("- `window_s_positive`: `window_s > 0` (envelope, every schema)")
    lines += [f"- `{inv.name}`: `{inv.check}`" for inv in schema.invariants]
    return "\n".join(lines) + "\n"


def schema_json(schema: Schema) -> dict[str, Any]:
    """Everything a tool needs to decode the schema, as plain JSON values."""
    return {
        "id": schema.id,
        "name": schema.name,
        "description": schema.description,
        "body_len": schema.body_len,
        "frame_len": schema.frame_len,
        "source": schema.source,
        "fields": [
            {
                "offset": offset,
                "name": f.name,
                "type": f.type,
                "count": f.count,
                "scale": f.scale,
                "unit": f.unit,
                "decoded": f.decoded,
                "role": f.role,
                "doc": f.doc,
                "bits": dict(f.bits),
                "bin_edges": list(f.bin_edges) if f.bin_edges else None,
            }
            for offset, f in schema.field_offsets()
        ],
        "invariants": [{"name": inv.name, "check": inv.check} for inv in schema.invariants],
    }
