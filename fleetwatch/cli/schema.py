"""`fleetwatch schema list | show ID | c-header ID`: the frame layouts this installation knows."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetwatch.frames.doc import schema_json, schema_markdown
from fleetwatch.frames.schema import Registry, Schema, SchemaError

schema_dirs_option = click.option(
    "--schema-dir",
    "schema_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FLEETWATCH_FRAMES__SCHEMA_DIRS",
    help="Directory of extra schema *.toml files (repeatable; env FLEETWATCH_FRAMES__SCHEMA_DIRS).",
)


def load_registry(schema_dirs: tuple[Path, ...]) -> Registry:
    try:
        return Registry.with_dirs(schema_dirs)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("schema")
def command() -> None:
    """Frame body schemas: list them, show one, generate the firmware's C header."""


@command.command("list")
@schema_dirs_option
def list_schemas(schema_dirs: tuple[Path, ...]) -> None:
    """One line per schema: id, name, body length, source file."""
    for schema in load_registry(schema_dirs):
        click.echo(f"{schema.id:>3}  {schema.name:<24} {schema.body_len:>3} bytes  {schema.source}")


@command.command("show")
@click.argument("schema_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the schema as JSON instead of a table.")
@schema_dirs_option
def show(schema_id: int, as_json: bool, schema_dirs: tuple[Path, ...]) -> None:
    """The layout of one schema: fields, offsets, units, roles and invariants."""
    schema = _get(load_registry(schema_dirs), schema_id)
    click.echo(json.dumps(schema_json(schema), indent=2) if as_json else schema_markdown(schema))


@command.command("c-header")
@click.argument("schema_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@schema_dirs_option
def c_header(schema_id: int, output: Path | None, schema_dirs: tuple[Path, ...]) -> None:
    """The C header the firmware compiles in for this schema (ids, lengths, offsets, scales, flag bits)."""
    from fleetwatch.frames.cheader import render_c_header

    text = render_c_header(_get(load_registry(schema_dirs), schema_id))
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def _get(registry: Registry, schema_id: int) -> Schema:
    try:
        return registry.get(schema_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
