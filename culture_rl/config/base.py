"""The base of every config section (kept apart from config.py, which imports the sections
that live in their own modules, e.g. config/calm.py)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class ConfigSection(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default); frozen so a
    # config object handed to Ray workers cannot drift from the one written in the run dir.
    # No float may be infinite or NaN: `epochs: .inf` would pass `gt=0` and train forever.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FieldProblem(ValueError):
    """Raised by a model validator about one field of its section, so the error names that
    field's dotted path (and the file that set it) rather than only the section."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _culture_key(value: Any) -> Any:
    # A culture may be named by its index in the synthetic world, and YAML reads `1` as an int.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CultureKey = Annotated[str, BeforeValidator(_culture_key)]


def section_with_defaults(section: type[ConfigSection], **defaults: Any) -> Any:
    """The annotation of a config field of type ``section`` whose defaults differ from the
    class's own (``pretrain:`` trains at 3e-3, not TrainConfig's 1e-4): its default is
    ``section(**defaults)``, and a partial value -- a YAML block setting some fields, or one
    dotted override such as ``pretrain.epochs=3`` -- is merged over ``defaults``. Without the
    merge, that override would silently reset every other field to the class's defaults."""
    def merged(value: Any) -> Any:
        return {**defaults, **value} if isinstance(value, dict) else value

    return Annotated[section, BeforeValidator(merged),
                     Field(default_factory=lambda: section(**defaults))]
