"""Tests for the survey loaders (culture_rl.data.surveys): GlobalOpinionQA CSV/TSV and JSONL."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest

from culture_rl.data.surveys import (
    SurveyQuestion,
    load_survey,
    write_survey_goqa_csv,
    write_survey_jsonl,
)
from culture_rl.core.errors import DataError

DD = "defaultdict(<class 'list'>, "


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def jsonl(path: Path, *rows: dict | str) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    return write(path, "\n".join(lines) + "\n")


def check_error(err: pytest.ExceptionInfo, path: Path, line: int) -> str:
    assert isinstance(err.value, DataError)
    message = str(err.value)
    assert path.name in message
    assert re.search(rf"\bline {line}\b", message), message
    assert err.value.line == line
    return message


def row(**overrides) -> dict:
    base = {
        "id": "q1",
        "question": "How important is family?",
        "options": ["Very", "Rather", "Not very"],
        "distributions": {"China": [2, 1, 1], "United States": [0.5, 0.25, 0.25]},
    }
    return {**base, **overrides}


# --- JSONL --------------------------------------------------------------------------------


def test_jsonl_is_loaded_and_renormalised(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(topic="family"), "", row(id="q2", source="GAS"))
    [q] = load_survey(path)
    assert q == SurveyQuestion(
        id="q1",
        question="How important is family?",
        options=("Very", "Rather", "Not very"),
        distributions={"China": (0.5, 0.25, 0.25), "United States": (0.5, 0.25, 0.25)},
        source="WVS",
        topic="family",
    )
    assert [q.id for q in load_survey(path, source=None)] == ["q1", "q2"]
    assert [q.source for q in load_survey(path, source="GAS")] == ["GAS"]


def test_jsonl_chinese_text(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(question="家庭重要吗？", options=["重要", "不重要"],
                                          distributions={"中国": [3, 1]}))
    [q] = load_survey(path)
    assert q.question == "家庭重要吗？" and q.distributions == {"中国": (0.75, 0.25)}


def test_jsonl_invalid_json_line(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(), row(id="q2"), '{"id": "q3", oops}')
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "invalid JSON" in check_error(err, path, 3)


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(), "[1, 2]")
    with pytest.raises(DataError) as err:
        load_survey(path)
    check_error(err, path, 2)


def test_jsonl_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", "\n\n")
    with pytest.raises(DataError) as err:
        load_survey(path)
    check_error(err, path, 1)


def test_jsonl_missing_key_and_duplicate_id(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(), {"id": "q2", "question": "x", "options": ["a", "b"]})
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "distributions" in check_error(err, path, 2)
    path = jsonl(tmp_path / "d.jsonl", row(), row())
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "duplicate" in check_error(err, path, 2)


@pytest.mark.parametrize(
    "dist, why",
    [([0, 0, 0], "sum to 0"), ([0.5, -0.1, 0.6], ">= 0"), ([0.5, float("nan"), 0.5], "NaN"),
     ([0.5, "x", 0.5], "numbers")],
)
def test_jsonl_bad_values(tmp_path: Path, dist: list, why: str) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(), row(id="q2", distributions={"China": dist}))
    with pytest.raises(DataError) as err:
        load_survey(path, skip_mismatched=True)
    message = check_error(err, path, 2)
    assert why in message and "China" in message


def test_fewer_than_two_options(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(options=["Yes"], distributions={"China": [1]}))
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "at least 2 options" in check_error(err, path, 1)


def test_mismatched_length_is_an_error(tmp_path: Path) -> None:
    bad = row(id="q2", distributions={"China": [0.5, 0.5, 0], "Japan": [0.5, 0.5]})
    path = jsonl(tmp_path / "s.jsonl", row(), bad)
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "'Japan'" in check_error(err, path, 2)


def test_mismatched_length_skipped_with_warning(tmp_path: Path, caplog) -> None:
    partly = row(id="q2", distributions={"China": [1, 1, 2], "Japan": [0.5, 0.5]})
    wholly = row(id="q3", distributions={"Japan": [0.5, 0.5]})
    path = jsonl(tmp_path / "s.jsonl", row(), partly, wholly)
    with caplog.at_level(logging.WARNING, logger="culture_rl.data.surveys"):
        questions = load_survey(path, skip_mismatched=True)
    assert [q.id for q in questions] == ["q1", "q2"]
    assert questions[1].distributions == {"China": (0.25, 0.25, 0.5)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("s.jsonl:2" in w and "'Japan'" in w for w in warnings), warnings
    assert any("s.jsonl:3" in w for w in warnings), warnings


# --- GlobalOpinionQA CSV / TSV ------------------------------------------------------------


GOQA = (
    "question,selections,options,source\n"
    '"Is work, for you, important?","' + DD + "{'United States': [0.1, 0.9], 'China': [1, 3]})\","
    '"[\'Yes, very\', \'No\']",WVS\n'
    '"Pew question","this is not parsed at all","[]",GAS\n'
    '"Trust people?","' + DD + "{'Japan': [0.2, 0.3, 0.5]})\",\"['A', 'B', 'C']\",WVS\n"
)


def test_goqa_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "goqa.csv", GOQA)
    first, second = load_survey(path)
    assert first == SurveyQuestion(
        id="goqa-2",
        question="Is work, for you, important?",
        options=("Yes, very", "No"),
        distributions={"United States": (0.1, 0.9), "China": (0.25, 0.75)},
        source="WVS",
    )
    assert second.id == "goqa-4" and second.options == ("A", "B", "C")
    assert second.distributions == {"Japan": (0.2, 0.3, 0.5)}


def test_goqa_source_none_parses_every_row(tmp_path: Path) -> None:
    path = write(tmp_path / "goqa.csv", GOQA)
    with pytest.raises(DataError) as err:
        load_survey(path, source=None)
    assert "'selections'" in check_error(err, path, 3)


def test_goqa_unknown_source(tmp_path: Path) -> None:
    path = write(tmp_path / "goqa.csv", GOQA)
    with pytest.raises(DataError) as err:
        load_survey(path, source="ESS")
    assert "goqa.csv" in str(err.value) and "'ESS'" in str(err.value)


def test_goqa_tsv(tmp_path: Path) -> None:
    text = "question\tselections\toptions\tsource\n" \
           f"工作重要吗？\t{DD}{{'中国': [0.6, 0.4]}})\t['是', '否']\tWVS\n"
    [q] = load_survey(write(tmp_path / "goqa.tsv", text))
    assert q.id == "goqa-2" and q.options == ("是", "否")
    assert q.distributions == {"中国": (0.6, 0.4)}


@pytest.mark.parametrize("column", ["selections", "selections-wrapped", "options"])
def test_goqa_function_call_is_rejected_not_executed(tmp_path: Path, column: str) -> None:
    marker = tmp_path / "pwned"
    # If this text were ever eval()'d, it would create the marker file.
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    cells = {"question": "q", "selections": DD + "{'X': [1, 1]})", "options": "['a', 'b']",
             "source": "WVS"}
    if column == "selections-wrapped":
        cells["selections"] = DD + payload + ")"
    else:
        cells[column] = payload
    path = tmp_path / "evil.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(cells))
        writer.writeheader()
        writer.writerow(cells)
    with pytest.raises(DataError) as err:
        load_survey(path)
    message = check_error(err, path, 2)
    assert f"'{column.split('-')[0]}'" in message and "literal" in message
    assert " at 0x" not in message  # the rejected node by its kind, not its memory address
    assert not marker.exists()


def test_goqa_mismatch_error_and_skip(tmp_path: Path, caplog) -> None:
    text = "question,selections,options,source\n" \
           f"q,\"{DD}{{'China': [0.5, 0.5], 'Peru': [1.0]}})\",\"['a', 'b']\",WVS\n"
    path = write(tmp_path / "goqa.csv", text)
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "'Peru'" in check_error(err, path, 2)
    with caplog.at_level(logging.WARNING, logger="culture_rl.data.surveys"):
        [q] = load_survey(path, skip_mismatched=True)
    assert q.distributions == {"China": (0.5, 0.5)}
    assert any("goqa.csv:2" in r.getMessage() and "'Peru'" in r.getMessage()
               for r in caplog.records)


def test_goqa_missing_column_and_ragged_row(tmp_path: Path) -> None:
    path = write(tmp_path / "goqa.csv", "question,selections,options\nq,{},[]\n")
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert "'source'" in check_error(err, path, 1)
    path = write(tmp_path / "rag.csv", GOQA + "q,x,WVS\n")
    with pytest.raises(DataError) as err:
        load_survey(path)
    check_error(err, path, 5)


def test_goqa_invalid_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "goqa.csv", GOQA.encode("utf-8") + b"\xc3(bad,x,y,WVS\n")
    with pytest.raises(DataError) as err:
        load_survey(path)
    check_error(err, path, 5)


# --- writers ------------------------------------------------------------------------------


QUESTIONS = [
    SurveyQuestion("w1", 'Is "work", for you, important?', ("Yes, very", "It's fine", "No"),
                   {"United States": (0.1, 0.2, 0.7), "中国": (1 / 3, 1 / 3, 1 / 3)}),
    SurveyQuestion("w2", "信任\n他人？", ("是", "否"), {"中国": (0.123456789, 0.876543211)},
                   source="GAS", topic="trust"),
    # Sums to 1 - 1 ulp: renormalising it would change the floats and break the round trip.
    SurveyQuestion("w3", "Rounded?", ("a", "b", "c"), {"Peru": (0.01, 0.29, 0.7)}),
]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "s.jsonl"
    write_survey_jsonl(QUESTIONS, path)
    assert load_survey(path, source=None) == QUESTIONS


def test_goqa_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "goqa.csv"
    write_survey_goqa_csv(QUESTIONS, path)
    loaded = load_survey(path, source=None)
    assert [q.id for q in loaded] == ["goqa-2", "goqa-3", "goqa-5"]
    assert [dataclasses.replace(q, id="") for q in loaded] == [
        dataclasses.replace(q, id="") for q in QUESTIONS
    ]
    assert [q.source for q in load_survey(path)] == ["WVS", "WVS"]
    assert "defaultdict(<class 'list'>, {" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("dist, why", [
    ([1e308, 1e308, 1e308], "too large to sum"),  # finite each, an OverflowError in fsum
    ([int("9" * 400), 1, 1], "too large for a float"),  # an OverflowError in float()
])
def test_jsonl_probabilities_beyond_float_range(tmp_path: Path, dist: list, why: str) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(), row(id="q2", distributions={"China": dist}))
    with pytest.raises(DataError) as err:
        load_survey(path)
    assert why in check_error(err, path, 2)


@pytest.mark.parametrize("line, why", [
    ("[" * 20000 + "]" * 20000, "nested too deeply"),  # a RecursionError in json.loads
    ('{"id": ' + "9" * 5000 + "}", "4300 digits"),  # a ValueError beyond int()'s digit limit
])
def test_jsonl_line_json_cannot_hold(tmp_path: Path, line: str, why: str) -> None:
    path = jsonl(tmp_path / "s.jsonl", row(), line)
    with pytest.raises(DataError) as err:
        load_survey(path)
    message = check_error(err, path, 2)
    assert "invalid JSON" in message and why in message
