"""Load and validate configuration: shipped defaults, then one site file, then overrides.

Why typed against the defaults: a site file with a misspelt key would otherwise silently
run on the default (say, a scanner timing or a consent text), so every key a site file sets
must exist in ``config/default.toml`` with the same type, and an error names key and file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "default.toml"
CONFIG_ENV = "CLINIVAULT_CONFIG"


class Section(Mapping[str, Any]):
    """A read-only table of settings, readable as ``section.key`` or ``section["key"]``."""

    def __init__(self, name: str, values: dict[str, Any]) -> None:
        self._name = name
        self._values = values

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no setting [{self._name}] {key}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {self._values!r})"


class Config(Mapping[str, Section]):
    """The merged, validated configuration. ``sources`` lists the files it came from."""

    def __init__(self, tables: dict[str, dict[str, Any]], sources: list[Path]) -> None:
        self._sections = {name: Section(name, dict(vals)) for name, vals in tables.items()}
        self.sources = sources

    def __getattr__(self, name: str) -> Section:
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(f"no config section [{name}]") from None

    def __getitem__(self, name: str) -> Section:
        return self._sections[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dict(sec) for name, sec in self._sections.items()}

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
        """A copy with *overrides* applied and validated like a site file."""
        tables = self.as_dict()
        _merge(tables, overrides, "overrides")
        return Config(tables, self.sources)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", "Check the --config path") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable", "Check its permissions") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory", "Name a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text",
            list: "a list"}.get(type(value), type(value).__name__)


def _coerce(default: Any, value: Any, where: str) -> Any:
    """Return *value* if it has the type of *default* (ints allowed for floats), else raise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default:
            elem = default[0]
            value = [_coerce(elem, v, f"{where} item") for v in value]
    else:  # pragma: no cover - defaults only hold TOML scalars and lists
        ok = type(value) is type(default)
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(default)}, not {value!r}")
    return value


def _merge(tables: dict[str, dict[str, Any]], site: Mapping[str, Any], origin: str) -> None:
    for section, values in site.items():
        if section not in tables:
            raise ConfigError(f"{origin}: unknown section [{section}]",
                              f"Known sections: {', '.join(sorted(tables))}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table of settings")
        for key, value in values.items():
            if key not in tables[section]:
                raise ConfigError(f"{origin}: unknown key [{section}] {key}",
                                  f"Known keys: {', '.join(sorted(tables[section]))}")
            tables[section][key] = _coerce(tables[section][key], value,
                                           f"{origin}: [{section}] {key}")


def load_config(site_file: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None,
                *, use_env: bool = True) -> Config:
    """Defaults, then *site_file* (or ``$CLINIVAULT_CONFIG``), then *overrides*."""
    tables = _read_toml(DEFAULT_CONFIG_PATH)
    sources = [DEFAULT_CONFIG_PATH]
    if site_file is None and use_env and os.environ.get(CONFIG_ENV):
        site_file = os.environ[CONFIG_ENV]
    if site_file is not None:
        path = Path(site_file)
        _merge(tables, _read_toml(path), str(path))
        sources.append(path)
    if overrides:
        _merge(tables, overrides, "overrides")
    return Config(tables, sources)
