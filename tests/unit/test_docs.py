"""The docs a user reads: the generated config reference is current and complete, the README stays
short, and no relative link in README.md or docs/*.md points to a missing file."""

import re
from pathlib import Path

import pytest

from culture_rl.config import ExperimentConfig, describe_fields
from culture_rl.config.docs import main, render_config_reference

ROOT = Path(__file__).resolve().parents[2]
CONFIG_MD = ROOT / "docs" / "config.md"
REGENERATE = "make docs (python -m culture_rl.config.docs --write docs/config.md)"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _field_paths() -> list[str]:
    return [line.split(" = ", 1)[0].strip() for line in describe_fields()
            if line.startswith("  ")]


def relative_links(markdown: str) -> list[str]:
    """Link targets outside code blocks and code spans, without web links and bare anchors."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    targets = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto: ...; an anchor on the same page
        targets.append(target.split("#", 1)[0])
    return targets


def test_config_reference_is_current():
    assert CONFIG_MD.is_file(), f"docs/config.md is missing: generate it with {REGENERATE}"
    assert CONFIG_MD.read_text("utf-8") == render_config_reference(), (
        f"docs/config.md is out of date with the config schema: regenerate it with {REGENERATE}")


def test_config_docs_check_flag(tmp_path, capsys):
    target = tmp_path / "config.md"
    assert main(["--check", str(target)]) == 1  # missing
    assert main(["--write", str(target)]) == 0
    assert target.read_text("utf-8") == render_config_reference()
    assert main(["--check", str(target)]) == 0
    target.write_text("stale\n", "utf-8")
    capsys.readouterr()
    assert main(["--check", str(target)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--write" in err


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 11_000, (f"README.md is {size} bytes (at most 11,000): move the detail into a "
                            "page under docs/ and link it from the README's Documentation list")


def test_link_parser():
    text = ("[a](x.md) [b](docs/y.md#part) [c](https://e.org) [d](#here) ![e](img.png)\n"
            "`[f](code.md)`\n```\n[g](block.md)\n```\n[h](<z.md>) [i](w.md \"title\")")
    assert relative_links(text) == ["x.md", "docs/y.md", "img.png", "z.md", "w.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    missing = [target for target in relative_links(page.read_text("utf-8"))
               if target and not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_every_field_is_in_the_config_reference():
    text = CONFIG_MD.read_text("utf-8")
    paths = _field_paths()
    assert {"sft.learning_rate", "world.vocabulary", "run.name", "calm.moe.enabled"} <= set(paths)
    missing = [path for path in paths if f"| `{path}` |" not in text]
    assert not missing, f"docs/config.md lacks {missing}: regenerate it with {REGENERATE}"


def test_config_reference_rows():
    text = render_config_reference()
    assert text.startswith("# Config reference\n")
    assert "python -m culture_rl.config.docs --write docs/config.md" in text
    row = next(line for line in text.splitlines() if line.startswith("| `sft.learning_rate` |"))
    cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]
    default = ExperimentConfig.model_fields["sft"].annotation.model_fields["learning_rate"].default
    assert cells[:3] == ["`sft.learning_rate`", "`float`", f"`{default!r}`"] and cells[3]
    assert "\n## sft\n" in text and "\n### calm.moe\n" in text
