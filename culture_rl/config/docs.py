"""The config reference, docs/config.md, generated from the schema's help text.

``render_config_reference()`` returns Markdown with one table per config section: every field's
dotted name, type, default and help text (the pydantic ``description``). The fields, and their
order, come from :func:`culture_rl.config.describe_fields` (what ``culture-rl config fields``
prints); this module only looks each one up in the schema and formats it as a table row.

    python -m culture_rl.config.docs                          # print the Markdown
    python -m culture_rl.config.docs --write docs/config.md   # (re)write the file (make docs)
    python -m culture_rl.config.docs --check docs/config.md   # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from culture_rl.config import ExperimentConfig, describe_fields

COMMAND = "python -m culture_rl.config.docs --write docs/config.md"

# describe_fields lines: "section.path: help" for a section, "  dotted.path = default  # help"
# for a field; only the dotted path is read back, the rest comes from the schema itself.
_SECTION_LINE = re.compile(r"^(?P<path>[A-Za-z_][\w.]*): ")
_FIELD_LINE = re.compile(r"^  (?P<path>[A-Za-z_][\w.]*) = ")


def _field_info(path: str) -> FieldInfo:
    """The FieldInfo of a dotted path of ExperimentConfig (a section or a field)."""
    model: type[BaseModel] = ExperimentConfig
    info: FieldInfo | None = None
    for name in path.split("."):
        info = model.model_fields[name]
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            model = info.annotation
    assert info is not None
    return info


def format_type(annotation: object) -> str:
    """A readable type: ``int``, ``list[str]``, ``'grid' | 'random'``, ``str | None``."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return format_type(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(format_type(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(format_type(arg) for arg in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def format_default(info: FieldInfo, path: str | None = None) -> str:
    """A field's default; with its dotted ``path``, as the default config holds it (a section
    such as ``pretrain`` has defaults of its own, not its class's)."""
    if info.is_required():
        return "required"
    if path is None:
        return repr(info.get_default(call_default_factory=True))
    value = ExperimentConfig()
    for name in path.split("."):
        value = getattr(value, name)
    return repr(value)


def _cell(text: str) -> str:
    """Table cell text: one line, with ``|`` escaped (also inside code spans, as GFM wants)."""
    return " ".join(text.split()).replace("|", "\\|")


def _prose(text: str) -> str:
    """Help text as Markdown prose: ``<name>`` would be read as an HTML tag and vanish."""
    return " ".join(text.split()).replace("<", "&lt;")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _sections() -> list[tuple[str, str, list[tuple[str, FieldInfo]]]]:
    """(section path, section help, its own fields) in describe_fields' order; fields of a
    nested section belong to that section, not to its parent."""
    sections: dict[str, tuple[str, list[tuple[str, FieldInfo]]]] = {}
    for line in describe_fields():
        field = _FIELD_LINE.match(line)
        if field:
            path = field["path"]
            parent = path.rpartition(".")[0]
            if parent not in sections:  # a field at the top level of the config
                sections[parent] = ("", [])
            sections[parent][1].append((path, _field_info(path)))
            continue
        section = _SECTION_LINE.match(line)
        if section is None:
            raise ValueError(f"describe_fields gave a line this module cannot read: {line!r}")
        path = section["path"]
        sections[path] = (_field_info(path).description or "", [])
    return [(path, help_text, fields) for path, (help_text, fields) in sections.items()]


def render_config_reference() -> str:
    """docs/config.md: every config field by section, with its type, default and help."""
    sections = _sections()
    top_level = [path for path, _, _ in sections if path and "." not in path]
    count = sum(len(fields) for _, _, fields in sections)
    out = [
        "# Config reference",
        "",
        f"Every field of the run configuration ({count} fields), by section: its dotted name, "
        "type, default and help text.",
        "",
        f"Generated from the schema's help text by `make docs` (`{COMMAND}`); do not edit it "
        "by hand: change the field's `description` in `culture_rl/` and regenerate. "
        "`tests/unit/test_docs.py` fails when it is out of date. The same list, in plain text: "
        "`culture-rl config fields`.",
        "",
        "Configs are YAML files (`extends: other.yaml` inherits another file) and every field can "
        "be overridden on the command line by its dotted name (`sft.learning_rate=1e-5`).",
        "",
        "Sections: " + ", ".join(f"[{path}](#{path})" for path in top_level) + ".",
    ]
    for path, help_text, fields in sections:
        level = "##" if "." not in path else "###"
        out += ["", f"{level} {path or '(top level)'}", ""]
        if help_text:
            out += [_prose(help_text), ""]
        if not fields:
            out.append("Only the sections below.")
            continue
        out += ["| field | type | default | help |", "|---|---|---|---|"]
        for name, info in fields:
            out.append("| " + " | ".join([
                _cell(_code(name)), _cell(_code(format_type(info.annotation))),
                _cell(_code(format_default(info, name))), _cell(_prose(info.description or ""))]) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m culture_rl.config.docs",
                                     description="Print, write or check docs/config.md.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", type=Path, help="write the reference to FILE")
    group.add_argument("--check", metavar="FILE", type=Path,
                       help="exit 1 when FILE differs from what --write would write")
    args = parser.parse_args(argv)
    text = render_config_reference()
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
        return 0
    if args.check:
        current = args.check.read_text("utf-8") if args.check.is_file() else None
        if current != text:
            what = "is out of date" if current is not None else "does not exist"
            print(f"{args.check} {what}: regenerate it with `make docs` (python -m "
                  f"culture_rl.config.docs --write {args.check})", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
