"""Load a compose file as Docker Compose does before it validates: YAML (merge keys applied), `include`
followed, and `${VAR}` interpolated from the environment it is given."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

_VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: object, env: dict[str, str]) -> object:
    """`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$` in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name, op, arg = m.group(2) or m.group(5), m.group(3), m.group(4)
        unset_or_empty = not env.get(name) if op and op.startswith(":") else name not in env
        if op in (":-", "-") and unset_or_empty:
            return arg
        if op in (":?", "?") and unset_or_empty:
            raise ValueError(f"required variable {name}: {arg}")
        return env.get(name, "")

    return _VAR.sub(sub, value)


def used_variables(path: Path) -> set[str]:
    """Names a compose file interpolates (to be told apart from the server's settings)."""
    return {m.group(2) or m.group(5) for m in _VAR.finditer(path.read_text()) if not m.group(1)}


def _resolve_paths(service: dict, folder: Path) -> None:
    """Relative build contexts and bind-mount sources count from the folder of the file that names them."""
    if isinstance(service.get("build"), dict) and "context" in service["build"]:
        service["build"]["context"] = str((folder / service["build"]["context"]).resolve())
    for i, volume in enumerate(service.get("volumes", [])):
        if isinstance(volume, str) and volume.startswith("."):
            source, _, rest = volume.partition(":")
            service["volumes"][i] = f"{(folder / source).resolve()}:{rest}"


def load(path: Path, env: dict[str, str]) -> dict:
    """The file's model: includes merged in, variables filled in, relative paths made absolute."""
    model = interpolate(yaml.safe_load(path.read_text()), env)
    for service in (model.get("services") or {}).values():
        _resolve_paths(service, path.parent)
    for included in model.pop("include", []):
        sub = load(path.parent / included, env)
        for section in ("services", "volumes", "networks"):
            model.setdefault(section, {}).update(sub.get(section) or {})
        model.setdefault("name", sub.get("name"))
    return model
