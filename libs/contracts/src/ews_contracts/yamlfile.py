"""Load YAML into pydantic models with errors that name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(ValueError):
    """A configuration file is unreadable or invalid; ``str()`` is one line naming line and field."""


class LocatedError(ValueError):
    """Raised by a model-level validator to point at the field at fault (e.g. ``("devices", 3, "gateway")``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _node_at(node: yaml.Node, loc: tuple[Any, ...]) -> yaml.Node:
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    node = v
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return node
    return node


def load_yaml_model(path: Path, model: type[M], what: str) -> M:
    """Parse ``path`` as YAML and validate it as ``model``; raise ConfigFileError with file:line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{what} {path}: cannot read it ({exc.strerror}); check the path") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(f"{what} {path}{where}: not valid YAML ({problem}); fix the syntax") from None
    if not isinstance(data, dict) or root is None:
        raise ConfigFileError(f"{what} {path}:1: expected a mapping of settings at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedError):
            loc = loc + cause.loc
        node = _node_at(root, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigFileError(
            f"{what} {path}:{node.start_mark.line + 1}: field '{field}': {msg}{more}"
        ) from None
