"""Tests for the SWOW loaders (culture_rl.data.swow) and the shared table reader they use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from culture_rl.data.swow import load_swow, write_swow_aggregated
from culture_rl.core.errors import DataError

RAW_HEADER = "participantID,age,gender,nativeLanguage,country,section,cue,R1,R2,R3\n"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def check_error(err: pytest.ExceptionInfo, path: Path, line: int) -> str:
    """The error is a DataError whose message names the file and exactly ``line N``."""
    assert isinstance(err.value, DataError)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert path.name in message
    assert re.search(rf"\bline {line}\b", message), message
    assert err.value.line == line
    return message


# --- raw SWOW -----------------------------------------------------------------------------


RAW = RAW_HEADER + (
    "1,25,Fe,United States,United States,set1,Dog,cat,Bone,#Missing\n"
    "2,31,Ma,Canada,Canada,set1,dog,Cat,NA,#Unknown\n"
    "3,40,X,United States,Australia,set1, dog ,leash,cat,\n"
    "4,22,Fe,United Kingdom,United States,set1,sun,hot,#Missing,#Missing\n"
)


def test_raw_counts_every_response_and_drops_missing_codes(tmp_path: Path) -> None:
    norms = load_swow(write(tmp_path / "raw.csv", RAW))
    assert norms == {
        "dog": [("cat", 3), ("bone", 1), ("leash", 1)],
        "sun": [("hot", 1)],
    }
    assert all(isinstance(n, int) for pairs in norms.values() for _, n in pairs)


def test_raw_country_filter_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.csv", RAW)
    assert load_swow(path, country="united states") == {
        "dog": [("bone", 1), ("cat", 1)],
        "sun": [("hot", 1)],
    }
    assert load_swow(path, country=["Canada", "Australia"]) == {
        "dog": [("cat", 2), ("leash", 1)]
    }


def test_raw_native_language_and_country_filters_combine(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.csv", RAW)
    assert load_swow(path, native_language="United States") == {
        "dog": [("cat", 2), ("bone", 1), ("leash", 1)]
    }
    assert load_swow(path, native_language="United States", country="Australia") == {
        "dog": [("cat", 1), ("leash", 1)]
    }


def test_filter_that_keeps_nothing_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.csv", RAW)
    with pytest.raises(DataError) as err:
        load_swow(path, country="Atlantis")
    assert "raw.csv" in str(err.value)
    assert "atlantis" in str(err.value).lower()
    assert "no associations" in str(err.value)


def test_raw_filter_needs_the_column(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.csv", "cue,R1,R2,R3\ndog,cat,bone,leash\n")
    assert load_swow(path) == {"dog": [("bone", 1), ("cat", 1), ("leash", 1)]}
    with pytest.raises(DataError) as err:
        load_swow(path, country="Canada")
    assert "'country'" in check_error(err, path, 1)


def test_raw_chinese_tsv_with_bom(tmp_path: Path) -> None:
    text = RAW_HEADER.replace(",", "\t") + (
        "1\t20\tFe\tChinese\tChina\ts1\t月亮\t太阳\t星星\t#Missing\n"
        "2\t21\tMa\tChinese\tChina\ts1\t月亮\t星星\t中秋\tNA\n"
        "3\t22\tMa\tEnglish\tUSA\ts1\t月亮\tmoon\t#Unknown\t\n"
    )
    path = write(tmp_path / "swow_zh.tsv", b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_swow(path, native_language="chinese") == {
        "月亮": [("星星", 2), ("中秋", 1), ("太阳", 1)]
    }


# --- aggregated SWOW ----------------------------------------------------------------------


def test_aggregated_response_column_sums_duplicates(tmp_path: Path) -> None:
    path = write(
        tmp_path / "agg.csv",
        "cue,response,freq\n"
        "dog,cat,3\n"
        "dog,bone,5.0\n"
        'dog,"leash, long",2\n'
        "Dog,Cat ,4\n"
        "dog,#Missing,9\n"
        "sun,hot,0\n"
        "sun,moon,1e1\n",
    )
    norms = load_swow(path)
    assert norms == {
        "dog": [("cat", 7), ("bone", 5), ("leash, long", 2)],
        "sun": [("moon", 10)],
    }
    assert all(type(n) is int for pairs in norms.values() for _, n in pairs)


def test_aggregated_association_column_tsv_chinese_with_bom(tmp_path: Path) -> None:
    # The BOM sits right before "cue", so a reader that kept it would miss the cue column.
    text = "cue\tassociation\tfreq\n猫\t狗\t2\n猫\t老鼠\t2\n猫\t鱼\t7\n"
    path = write(tmp_path / "agg.tsv", b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_swow(path) == {"猫": [("鱼", 7), ("狗", 2), ("老鼠", 2)]}


def test_aggregated_file_cannot_be_filtered(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", "cue,response,freq\ndog,cat,3\n")
    with pytest.raises(DataError) as err:
        load_swow(path, native_language="English")
    assert "nativeLanguage" in check_error(err, path, 1)


def test_round_trip_through_writer(tmp_path: Path) -> None:
    norms = {
        "月亮": [("星星", 5), ("太阳", 2)],
        "dog": [("cat", 3), ("bone, big", 1), ('say "woof"', 1)],
    }
    path = tmp_path / "out" / "norms.csv"
    write_swow_aggregated(norms, path)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "cue,response,freq"
    assert load_swow(path) == norms


# --- bad files ----------------------------------------------------------------------------


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", "cue,word,freq\ndog,cat,3\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    message = check_error(err, path, 1)
    assert "'response'" in message and "'association'" in message


def test_ragged_row(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", "cue,response,freq\ndog,cat,3\ndog,bone,2,extra\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    check_error(err, path, 3)


def test_ragged_row_after_multiline_quoted_field(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", 'cue,response,freq\ndog,"two\nlines",3\ndog,bone\n')
    with pytest.raises(DataError) as err:
        load_swow(path)
    check_error(err, path, 4)


@pytest.mark.parametrize("freq", ["abc", "-1", "2.5", "nan", ""])
def test_bad_freq(tmp_path: Path, freq: str) -> None:
    path = write(tmp_path / "agg.csv", f"cue,response,freq\ndog,cat,3\n\ndog,bone,{freq}\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    assert err.value.column == "freq"
    assert "'freq'" in check_error(err, path, 4)


def test_invalid_utf8_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", b"cue,response,freq\ndog,cat,3\ndog,b\xff\xfene,2\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    check_error(err, path, 3)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError) as err:
        load_swow(path)
    check_error(err, path, 1)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataError) as err:
        load_swow(path)
    assert "nowhere.csv" in str(err.value) and "not found" in str(err.value)


def test_empty_cue(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", "cue,response,freq\ndog,cat,3\n ,bone,2\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    assert "'cue'" in check_error(err, path, 3)


def test_unclosed_quote_is_an_error_not_a_swallowed_file(tmp_path: Path) -> None:
    # The quote opened in R3 of line 3 is never closed: the csv module's lenient mode read the
    # rest of the file into that one field (the row still had 10 fields), so every later row
    # vanished without a word.
    path = write(tmp_path / "raw.csv", RAW_HEADER
                 + "1,25,Fe,US,US,set1,dog,cat,bone,leash\n"
                 + '2,31,Ma,US,US,set1,dog,cat,bone,"leash\n'
                 + "3,40,X,US,US,set1,sun,hot,day,sky\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    assert "never closed" in check_error(err, path, 3)


def test_header_only_file_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "agg.csv", "cue,response,freq\n\n")
    with pytest.raises(DataError) as err:
        load_swow(path)
    assert "only a header" in check_error(err, path, 1)
