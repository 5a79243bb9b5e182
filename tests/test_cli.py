"""The `fleetwatch` command itself: every subcommand module is listed, and listing them imports none."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import fleetwatch.cli as cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_subcommand_module_is_listed_with_its_own_short_help() -> None:
    modules = {m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_")}
    assert {module for module, _ in cli.COMMANDS.values()} == modules
    for name, (module, short_help) in cli.COMMANDS.items():
        command = importlib.import_module(f"fleetwatch.cli.{module}").command
        assert command.name == name
        assert command.get_short_help_str(limit=80) == short_help, f"update COMMANDS[{name!r}]"


def test_help_lists_every_command_without_importing_them() -> None:
    probe = (
        "import sys\n"
        "from fleetwatch.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('scipy', 'duckdb', 'matplotlib', 'fleetwatch.cli.demo') if m in sys.modules)\n"
        "print('imported:', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.rstrip().endswith("imported: []"), out
    for name in cli.COMMANDS:
        assert f"\n  {name} " in out
