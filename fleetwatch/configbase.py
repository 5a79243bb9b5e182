"""The base of every configuration section, and the topic checks sections share.

Apart from `fleetwatch.config` so that sections defined elsewhere (`fleetwatch.actions.config`,
`fleetwatch.actions.rollout_config`) can be embedded in the root `Settings` without a circular import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be ignored silently)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """`<secret>_file = "/path"` reads the secret from that file (trailing newline stripped)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, info in cls.model_fields.items():
            path = data.pop(f"{name}_file", None)
            if path is None:
                continue
            if info.annotation not in (SecretStr, SecretStr | None):
                raise ValueError(f"{name}_file: {name} is not a secret")
            try:
                data[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
        return data


def check_device_topic(value: str) -> str:
    """A subscription whose one `+` level is the device id (no `#`)."""
    if value.split("/").count("+") != 1 or "#" in value:
        raise ValueError(f"expected exactly one `+` level (the device id) and no `#`, got {value!r}")
    return value


def check_command_topic(value: str) -> str:
    """A topic template to one device: exactly one `{device}` placeholder, no wildcards."""
    if value.count("{device}") != 1 or "+" in value or "#" in value:
        raise ValueError(f"expected one {{device}} placeholder and no wildcards, got {value!r}")
    return value
