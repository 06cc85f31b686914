"""Settings shared by the CLI commands of one invocation."""

from __future__ import annotations

from pathlib import Path

from radstream.settings import Settings, load_settings

_config: Path | None = None
_settings: Settings | None = None


def set_config(path: Path | None) -> None:
    global _config, _settings
    _config, _settings = path, None


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings(_config)
    return _settings
