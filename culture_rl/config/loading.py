"""Reading a run configuration: YAML files with ``extends:``, dotted ``key=value`` overrides,
validation into :class:`~culture_rl.config.ExperimentConfig` with one-line errors that name the
file and the field, and writing the resolved config back (secrets redacted).

Imported by, and re-exported from, :mod:`culture_rl.config` (the schema): import from there.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from culture_rl.config.base import FieldProblem
from culture_rl.core.errors import ConfigError
from culture_rl.core.redact import redact

if TYPE_CHECKING:
    from culture_rl.config import ExperimentConfig

# Not imported from culture_rl.config at module level: that module imports this one at its end,
# and this one must import on its own too.
COMMAND_LINE = "command line"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that rejects a key given twice in one mapping: PyYAML keeps the last
    one silently, so a second ``sft:`` section would drop every setting of the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` may be overridden by the keys beside it
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:
                    continue  # unhashable: the base class reports it with its line
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}invalid YAML: {problem}", path=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path=path) from None
    except (ValueError, RecursionError) as err:
        # PyYAML lets int() fail on a number of over 4300 digits, and nests by recursion.
        reason = ("nested too deeply" if isinstance(err, RecursionError)
                  else str(err).split(";")[0])
        raise ConfigError(f"invalid YAML: {reason}", path=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of sections", path=path)
    return data


def _merge(base: dict, override: dict, origins: dict, source: str, prefix: str = "") -> dict:
    """Deep-merge ``override`` into a copy of ``base``; record which file set each leaf."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, origins, source, dotted + ".")
        else:
            merged[key] = copy.deepcopy(value)
            _record_origin(origins, dotted, value, source)
    return merged


def _record_origin(origins: dict, dotted: str, value: Any, source: str) -> None:
    origins[dotted] = source
    if isinstance(value, dict):
        for key, sub in value.items():
            _record_origin(origins, f"{dotted}.{key}", sub, source)


def _load_tree(path: Path, origins: dict, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError("extends: cycle through " + " -> ".join(str(p) for p in chain + (path,)),
                          path=path)
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    tree: dict = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError("must be a path to another YAML file", path=path, field="extends")
        tree = _load_tree((path.parent / parent), origins, chain + (path,))
    return _merge(tree, data, origins, str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``sft.learning_rate=1e-5`` -> (["sft", "learning_rate"], 1e-5); the value is YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form section.field=value",
                          path=COMMAND_LINE)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML: the text itself
        value = raw
    if isinstance(value, str) or value is None:
        # `key=` clears a value; `key=1e-5` must be a float (PyYAML 1.1 reads it as a string).
        try:
            value = float(raw) if value is not None and any(c in raw for c in ".eE") else value
        except ValueError:
            pass
    return key.split("."), value


def _apply_overrides(tree: dict, overrides: list[str], origins: dict) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        tree = _merge(tree, nested, origins, COMMAND_LINE)
    return tree


def _field_error(err: ValidationError, origins: dict, default_path: str) -> ConfigError:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    problem = (first.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        loc.append(problem.field)  # a model validator's: its loc is only the section
    dotted = ".".join(loc)
    # Name the file that set this value (or its nearest set ancestor), else the top file.
    source = default_path
    for depth in range(len(loc), 0, -1):
        candidate = ".".join(loc[:depth])
        if candidate in origins:
            source = origins[candidate]
            break
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    # A FieldProblem's input is its whole section; its message carries the values instead.
    if (first["type"] not in ("extra_forbidden", "missing") and "input" in first
            and not isinstance(problem, FieldProblem)):
        got = repr(first["input"])
        message += f" (got {got if len(got) <= 200 else got[:200] + '...'})"
    more = len(err.errors()) - 1
    if more:
        message += f" [and {more} more problem{'s' if more > 1 else ''}]"
    return ConfigError(message, path=source, field=dotted or None)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None
                ) -> "ExperimentConfig":
    """Load ``path`` (following ``extends:``), apply ``key=value`` overrides, validate."""
    origins: dict[str, str] = {}
    tree = _load_tree(Path(path), origins) if path is not None else {}
    tree = _apply_overrides(tree, list(overrides or []), origins)
    from culture_rl.config import ExperimentConfig

    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise _field_error(err, origins, str(path) if path else COMMAND_LINE) from None


def config_to_yaml(config: BaseModel) -> str:
    """The config as YAML, with secrets redacted (credentials in an address, any secret-looking
    key): every dump of it is written somewhere others read (config.yaml, eval.json, the
    terminal). Credentials come from the environment, so a redacted dump still reloads."""
    return yaml.safe_dump(redact(config.model_dump(mode="json")), sort_keys=False,
                          allow_unicode=True)


def describe_fields(model: type[BaseModel] | None = None, prefix: str = "",
                    defaults: BaseModel | None = None) -> list[str]:
    """One line per leaf field of ``model`` (default: the whole ExperimentConfig): dotted
    path, default and help text. The defaults are read from ``defaults`` (default: the model's
    default instance), so a section whose defaults differ from its class's (``pretrain``)
    shows its own."""
    if model is None:
        from culture_rl.config import ExperimentConfig

        model = ExperimentConfig
    if defaults is None:
        defaults = model()
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{prefix}{name}: {field.description}")
            lines.extend(describe_fields(annotation, f"{prefix}{name}.",
                                         getattr(defaults, name)))
        else:
            lines.append(f"  {prefix}{name} = {getattr(defaults, name)!r}  "
                         f"# {field.description}")
    return lines


def write_run_config(config: "ExperimentConfig") -> Path:
    """Write the resolved config to ``<run dir>/config.yaml`` (reloadable with load_config)."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    text = config_to_yaml(config)
    target = config.run_dir / "config.yaml"
    if target.is_file() and target.read_text("utf-8") != text:
        print(f"note: {target} differs from this config and is replaced; checkpoints made "
              "with the earlier settings are still resumed", flush=True)
    target.write_text(text, "utf-8")
    return target
