"""Typed configuration: every command reads one pydantic model from YAML plus `--set key=value` overrides.

An unknown or mistyped field is an error naming the field (with a suggestion), never a silent default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="Config")


class UserError(ValueError):
    """A problem the user can fix (a config, a data file, a model path, an output directory): the CLI prints
    its message as is and exits with status 2, no traceback."""


class ConfigError(UserError):
    """A configuration that cannot be used; the message names the source and the field."""


class Config(BaseModel):
    """Base of every stage's configuration: unknown fields are rejected, assignments validated, and every
    float field (nested, in tuples, optional) must be finite: `learning_rate=inf` or `nan` is an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value), the value read as YAML (so 3, 1e-4, true, [1, 2] work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _section_class(field: Any) -> type[BaseModel] | None:
    """The config class of a nested section field (`sft: SFTConfig`, `lora: LoraSettings | None`), else None."""
    annotation = getattr(field, "annotation", None)
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _fill_sections(cls: type[BaseModel], data: dict[str, Any], default: BaseModel | None) -> dict[str, Any]:
    """Sections given in part keep the rest of their default: `--set sft.max_steps=4` on the quickstart keeps
    the learning rate its `sft` default sets, not SFTConfig's own. Priority: given > the enclosing default's
    value > the section's own default."""
    filled = dict(data)
    for name, value in data.items():
        field = cls.model_fields.get(name)
        section = _section_class(field)
        if section is None or not isinstance(value, dict):
            continue
        if default is not None and name in default.model_fields_set:
            section_default = getattr(default, name)
        else:
            section_default = field.get_default(call_default_factory=True) if field is not None else None
        base = section_default.model_dump(exclude_unset=True) if isinstance(section_default, BaseModel) else {}
        given_default = section_default if isinstance(section_default, BaseModel) else None
        filled[name] = {**base, **_fill_sections(section, value, given_default)}
    return filled


def _field_names(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields of the (possibly nested) model that `loc` points into."""
    model: Any = cls
    for part in loc:
        model = _section_class(model.model_fields.get(part) if isinstance(part, str) else None)
        if model is None:
            return []
    return list(model.model_fields)


def format_validation_error(cls: type[BaseModel], error: ValidationError, source: str) -> str:
    """One line per problem: `source: field 'a.b': message`, with a suggestion for unknown names."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        name = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            known = _field_names(cls, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known fields: {', '.join(known)})"
            lines.append(f"{source}: unknown field {name!r}{hint}")
        else:
            got = item.get("input")
            lines.append(f"{source}: field {name!r}: {item['msg']} (got {got!r})")
    return "\n".join(lines)


def load_config(cls: type[C], path: Path | str | None = None, overrides: list[str] | None = None) -> C:
    """Read `cls` from a YAML file (optional) and apply `key=value` overrides in order."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        data = loaded or {}
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    if overrides:
        source += " + --set"
    try:
        return cls.model_validate(_fill_sections(cls, data, None))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(cls, exc, source)) from None


def _describe_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(section)"
    return repr(value)


def config_help(
    cls: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) for every field, nested sections flattened with dots; a section's
    defaults are those its enclosing config gives it (the quickstart's `sft.learning_rate`, not SFTConfig's)."""
    rows = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if get_origin(annotation) is Literal:
            type_name = " | ".join(str(choice) for choice in get_args(annotation))
        else:
            type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        if nested is not None:
            rows.extend(config_help(nested, f"{prefix}{name}.", default if isinstance(default, nested) else None))
            continue
        rows.append((prefix + name, type_name, _describe_default(default), field.description or ""))
    return rows


def dump_config(config: BaseModel, path: Path) -> None:
    """Write the resolved configuration next to a run's outputs, so the run can be reproduced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
