"""How configuration text becomes data, and a validation error one line: YAML read with unique keys and its line
and column in every error, ``--set``/environment values parsed as the field they set, and the message engine that
names the key path, what was expected and what was found (``mqtt.port: expected an integer 1-65535, got 'abc'``).

The schema itself is ``edge_app.config``; these functions take it as ``schema``.
"""

import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import annotated_types
import yaml
from pydantic import BaseModel, SecretStr, ValidationError

SECRET_KEYS = {"password"}


class ConfigError(ValueError):
    """A configuration problem, described in one line that starts with the key path."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML would silently keep the last one).

    A value that its tag cannot take (``!!int abc``) is a YAML error with its line too: PyYAML itself raises a bare
    ValueError or IndexError there.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, IndexError, TypeError, OverflowError):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(None, None, f"{_shown(node.value)} is not a valid {tag}",
                                                    node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" keys may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {_shown(key)}",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    """The YAML file's top-level mapping; ``ConfigError`` naming the file (with line and column) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__}: {exc})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML ({_printable(' '.join(str(problem).split()))})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {_shown(data)}")
    return data


def key_path(keys: list[str], origin: str) -> tuple[str, ...]:
    keys = [key.strip() for key in keys]
    if not all(keys):
        raise ConfigError(f"{origin}: expected a key path like mqtt.port")
    return tuple(keys)


def set_value(schema: type[BaseModel], data: dict, keys: tuple[str, ...], value: Any, origins: dict,
              origin: str) -> None:
    """Put ``value`` at ``keys`` in ``data``, remembering where it came from (for the error message)."""
    for depth in range(1, len(keys)):
        field = _field_annotation(schema, keys[:depth])
        if field is not None and not _is_section(field[0]):
            raise ConfigError(f"{'.'.join(keys)}: unknown key ({'.'.join(keys[:depth])} is a value, not a section;"
                              f" from {origin})")
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys[:depth + 1])}: expected a mapping of keys, got {_shown(child)}"
                              f" (so {origin} cannot apply)")
        node = child
    node[keys[-1]] = value
    origins[keys] = origin


def parse_value(schema: type[BaseModel], keys: tuple[str, ...], raw: str) -> Any:
    """A YAML scalar, except that a text field keeps the text as typed (``0123`` stays a string, not 83)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value is not None and _is_text(_field_annotation(schema, keys)):
        return raw
    return value


def _field_annotation(schema: type[BaseModel], keys: Iterable[Any]) -> Any:
    """The type annotation (and constraints) of the field at ``keys``, or None when there is no such field."""
    annotation: Any = schema
    metadata: list = []
    for key in keys:
        annotation = _without_none(annotation)
        if _is_section(annotation):
            field = annotation.model_fields.get(key) if isinstance(key, str) else None
            if field is None:
                return None
            annotation, metadata = field.annotation, field.metadata
        elif typing.get_origin(annotation) is list and isinstance(key, int):
            annotation, metadata = typing.get_args(annotation)[0], []
        else:
            return None
    return annotation, metadata


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, getattr(types, "UnionType", Union)):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _is_section(annotation: Any) -> bool:
    annotation = _without_none(annotation)
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_text(field: Any) -> bool:
    return field is not None and _without_none(field[0]) in (str, SecretStr)


def _expected(field: Any) -> str:
    """In words, what a field accepts: 'an integer 1-65535', 'one of cpu, edgetpu, gpu', ..."""
    annotation, metadata = field
    optional = _without_none(annotation) is not annotation
    annotation = _without_none(annotation)
    if typing.get_origin(annotation) is Annotated:
        annotation, metadata = typing.get_args(annotation)[0], [*metadata, *annotation.__metadata__]
    bounds = {name.capitalize(): getattr(m, name) for m in metadata for name in ("gt", "ge", "lt", "le")
              if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, name)}
    if typing.get_origin(annotation) is Literal:
        words = "one of " + ", ".join(str(choice) for choice in typing.get_args(annotation))
    elif annotation is bool:
        words = "true or false"
    elif annotation in (int, float):
        words = "an integer" if annotation is int else "a number"
        if annotation is int and "Ge" in bounds and "Le" in bounds:
            words += f" {bounds['Ge']}-{bounds['Le']}"
        else:
            limits = [f"{sign} {bounds[name]}" for name, sign in (("Gt", ">"), ("Ge", ">="), ("Lt", "<"), ("Le", "<="))
                      if name in bounds]
            words += (" " + " and ".join(limits)) if limits else ""
    elif typing.get_origin(annotation) is list:
        item = _expected((typing.get_args(annotation)[0], []))
        words = "a list of " + {"an integer": "integers", "a string": "strings"}.get(item, item)
    elif _is_section(annotation):
        words = "a mapping of keys"
    else:
        words = "a string"
    return words + (" or null" if optional else "")


def _shown(value: Any, secret: bool = False) -> str:
    """How a wrong value is quoted back: YAML-like, short, and never a secret."""
    if secret:
        return f"a hidden value of type {type(value).__name__}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (dict, list, tuple, set)):
        kind = "a mapping" if isinstance(value, dict) else "a list"
        text = repr(value)
        return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _printable(key: object) -> str:
    """A key as it can appear in a one-line message: control characters escaped, an empty key quoted."""
    text = str(key)
    return (text if text.isprintable() else repr(text)[1:-1]) or "''"


def describe_errors(schema: type[BaseModel], exc: ValidationError, origins: Mapping[tuple[str, ...], str]) -> str:
    """The first validation error as one line naming the key path (and where the value came from)."""
    errors = exc.errors(include_url=False)
    message = _describe(schema, errors[0])
    loc = tuple(str(key) for key in errors[0]["loc"])
    for keys, origin in origins.items():
        if loc[: len(keys)] == keys or keys[: len(loc)] == loc:
            message += f" (from {origin})"
            break
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message


def _describe(schema: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    path = "".join(
        f"[{key}]" if isinstance(key, int) else f"{'.' if index else ''}{_printable(key)}"
        for index, key in enumerate(loc)
    )
    path = path or "(top level)"
    kind = error["type"]
    if kind == "config_rule":
        return f"{path}.{error['ctx']['key']}: {error['ctx']['message']}"
    if kind == "invalid_key":  # a key that is not text (0:, true:, null:): the path names it, not an index
        path = ".".join(_printable(key) for key in (*loc[:-1], error["input"]))
    if kind in ("extra_forbidden", "invalid_key"):
        parent = _field_annotation(schema, loc[:-1])
        model = _without_none(parent[0]) if parent else None
        known = f"; known keys: {', '.join(model.model_fields)}" if parent and _is_section(model) else ""
        return f"{path}: unknown key{known}"
    if kind == "value_error":
        return f"{path}: {error['ctx']['error']}"
    field = _field_annotation(schema, loc)
    expected = _expected(field) if field is not None else "something else"
    secret = any(isinstance(key, str) and key in SECRET_KEYS for key in loc)
    return f"{path}: expected {expected}, got {_shown(error.get('input'), secret)}"
