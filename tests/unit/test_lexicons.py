"""Tests for the Warriner and Brysbaert lexicon loaders (culture_rl.data.lexicons)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from culture_rl.data.lexicons import (
    load_brysbaert,
    load_warriner,
    merge_lexicons,
    write_brysbaert,
    write_warriner,
)
from culture_rl.core.errors import DataError

# The published Warriner CSV starts with an unnamed row-index column and has many more columns.
WARRINER = (
    ",Word,V.Mean.Sum,V.SD.Sum,A.Mean.Sum,A.SD.Sum,D.Mean.Sum,D.SD.Sum\n"
    "1,aardvark,6.26,2.21,2.41,1.4,4.27,1.75\n"
    "2, Abalone ,5.3,1.59,2.65,1.9,4.95,2.45\n"
)
BRYSBAERT = (
    "Word\tBigram\tConc.M\tConc.SD\tUnknown\tTotal\tPercent_known\tSUBTLEX\tDom_Pos\n"
    "a\t0\t1.46\t1.14\t2\t30\t0.93\t1041179\tArticle\n"
    "a cappella\t1\t2.92\t1.42\t3\t29\t0.9\t0\t#N/A\n"
    "Aardvark\t0\t4.68\t0.86\t0\t28\t1\t21\tNoun\n"
)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def check_error(err: pytest.ExceptionInfo, path: Path, line: int) -> str:
    assert isinstance(err.value, DataError)
    message = str(err.value)
    assert path.name in message
    assert re.search(rf"\bline {line}\b", message), message
    assert err.value.line == line
    return message


def test_load_warriner(tmp_path: Path) -> None:
    lex = load_warriner(write(tmp_path / "warriner.csv", WARRINER))
    assert lex == {
        "aardvark": {"valence": 6.26, "arousal": 2.41, "dominance": 4.27},
        "abalone": {"valence": 5.3, "arousal": 2.65, "dominance": 4.95},
    }


def test_load_brysbaert_tsv(tmp_path: Path) -> None:
    lex = load_brysbaert(write(tmp_path / "brysbaert.txt", BRYSBAERT))
    assert lex == {
        "a": {"concreteness": 1.46},
        "a cappella": {"concreteness": 2.92},
        "aardvark": {"concreteness": 4.68},
    }


@pytest.mark.parametrize(
    "value, column, load",
    [("9.5", "V.Mean.Sum", load_warriner), ("0.99", "D.Mean.Sum", load_warriner),
     ("high", "A.Mean.Sum", load_warriner), ("", "A.Mean.Sum", load_warriner),
     ("5.01", "Conc.M", load_brysbaert), ("nan", "Conc.M", load_brysbaert)],
)
def test_bad_rating(tmp_path: Path, value: str, column: str, load) -> None:
    header = "Word,V.Mean.Sum,A.Mean.Sum,D.Mean.Sum,Conc.M\n"
    cells = {"V.Mean.Sum": "5", "A.Mean.Sum": "5", "D.Mean.Sum": "5", "Conc.M": "3"}
    good = "ok," + ",".join(cells.values()) + "\n"
    cells[column] = value
    bad = "bad," + ",".join(cells.values()) + "\n"
    path = write(tmp_path / "lex.csv", header + good + good.replace("ok", "fine") + bad)
    with pytest.raises(DataError) as err:
        load(path)
    assert err.value.column == column
    assert repr(column) in check_error(err, path, 4)


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "warriner.csv", "Word,V.Mean.Sum,A.Mean.Sum\nx,5,5\n")
    with pytest.raises(DataError) as err:
        load_warriner(path)
    assert "'D.Mean.Sum'" in check_error(err, path, 1)
    with pytest.raises(DataError) as err:
        load_brysbaert(path)
    assert "'Conc.M'" in check_error(err, path, 1)


def test_ragged_row(tmp_path: Path) -> None:
    path = write(tmp_path / "brysbaert.tsv", BRYSBAERT + "zebra\t0\t4.9\n")
    with pytest.raises(DataError) as err:
        load_brysbaert(path)
    check_error(err, path, 5)


def test_invalid_utf8_and_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "w.csv", WARRINER.encode() + b"3,caf\xe9,5,1,5,1,5,1\n")
    with pytest.raises(DataError) as err:
        load_warriner(path)
    check_error(err, path, 4)
    path = write(tmp_path / "empty.csv", "  \n")
    with pytest.raises(DataError) as err:
        load_brysbaert(path)
    check_error(err, path, 1)


def test_warriner_round_trip(tmp_path: Path) -> None:
    ratings = {"good": {"valence": 7.89, "arousal": 3.66, "dominance": 6.0 + 1e-9},
               "bad, really": {"valence": 2.0, "arousal": 5.1, "dominance": 1.0}}
    path = tmp_path / "out" / "warriner.csv"
    write_warriner(ratings, path)
    assert path.read_text(encoding="utf-8").splitlines()[0] == \
        "Word,V.Mean.Sum,A.Mean.Sum,D.Mean.Sum"
    assert load_warriner(path) == ratings


def test_brysbaert_round_trip(tmp_path: Path) -> None:
    ratings = {"apple": {"concreteness": 5.0}, "ice cream": {"concreteness": 4.93},
               "idea": {"concreteness": 1.61}}
    path = tmp_path / "brysbaert.csv"
    write_brysbaert(ratings, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Word,Bigram,Conc.M,Conc.SD")
    assert lines[2].startswith("ice cream,1,")
    assert load_brysbaert(path) == ratings


def test_writer_rejects_missing_rating(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dominance"):
        write_warriner({"x": {"valence": 5, "arousal": 5}}, tmp_path / "w.csv")


def test_merge_lexicons(tmp_path: Path) -> None:
    warriner = {"dog": {"valence": 7.0, "arousal": 5.0, "dominance": 6.0}}
    brysbaert = {"dog": {"concreteness": 4.9}, "idea": {"concreteness": 1.6}}
    override = {"idea": {"concreteness": 1.5}}
    merged = merge_lexicons(warriner, brysbaert, override)
    assert merged == {
        "dog": {"valence": 7.0, "arousal": 5.0, "dominance": 6.0, "concreteness": 4.9},
        "idea": {"concreteness": 1.5},
    }
    assert warriner == {"dog": {"valence": 7.0, "arousal": 5.0, "dominance": 6.0}}
    assert brysbaert["idea"] == {"concreteness": 1.6}
    assert merge_lexicons() == {}


def test_unclosed_quote_in_the_last_column(tmp_path: Path) -> None:
    # Without strict CSV parsing the rest of the file became one rating text -- or, in a
    # column that is not read (Conc.SD), was dropped silently.
    path = write(tmp_path / "b.csv", 'Word,Bigram,Conc.M,Conc.SD\nsun,0,4.5,1.0\nsea,0,4.1,"0.9\n'
                                     "sky,0,3.9,1.1\n")
    with pytest.raises(DataError) as err:
        load_brysbaert(path)
    assert "never closed" in check_error(err, path, 3)
