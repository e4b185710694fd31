"""Prompt templates, one place for every wording the model sees (English and Chinese).

The synthetic base corpus is written with these same templates, so the tiny base model already
"answers like its majority culture" when asked, as a real vanilla model does.
"""

from __future__ import annotations

import json
from typing import Literal, Sequence

Language = Literal["en", "zh"]

_ASSOCIATION = {
    "en": 'Cue: {cue}\nWhat words come to mind for "{cue}"? List them, most common first.\n'
          "Answer:",
    "zh": "提示词：{cue}\n看到“{cue}”你会想到哪些词？按常见程度列出。\n回答：",
}
_LIST_SEPARATOR = {"en": ", ", "zh": "，"}
_CULTURE_PREAMBLE = {
    "en": "You are a person from {culture}.\n",
    "zh": "你是一位来自{culture}的人。\n",
}
_RANKING = {
    "en": 'Rank these words by how often people associate them with "{cue}", most frequent '
          "first: {words}.\nThink first, then end with a Final Ranking section of lines "
          '"N: word".\n',
    "zh": "请按人们把这些词与“{cue}”联想的频率从高到低排序：{words}。\n"
          "先思考，最后给出“最终排名”部分，每行“N: 词”。\n",
}
_RANKING_HEADING = {"en": "Final Ranking:", "zh": "最终排名："}
_SURVEY = {"en": ("Question: {question}\nOptions:\n{options}\nAnswer:", "{n}. {option}"),
           "zh": ("问题：{question}\n选项：\n{options}\n回答：", "{n}. {option}")}


def association_prompt(cue: str, language: Language = "en") -> str:
    return _ASSOCIATION[language].format(cue=cue)


def association_completion(words: Sequence[str], language: Language = "en") -> str:
    """The target an SFT example teaches: the words in order, after one leading space."""
    return " " + _LIST_SEPARATOR[language].join(words)


def culture_preamble(culture: str, language: Language = "en") -> str:
    """The culture-aware preamble ("you are a person from X")."""
    return _CULTURE_PREAMBLE[language].format(culture=culture)


def split_preamble(text: str) -> tuple[str | None, str]:
    """(the preamble's sentence, the rest) of a prompt that opens with :func:`culture_preamble`
    or the question writer's role (:func:`question_request`) in either language, else
    (None, text): a chat model reads the preamble as its system message
    (culture_rl.models.chat)."""
    for role in _QUESTION_WRITER.values():
        if text.startswith(role):
            return role.rstrip("\n"), text[len(role):]
    for template in _CULTURE_PREAMBLE.values():
        head, tail = template.split("{culture}")
        if text.startswith(head):
            end = text.find(tail, len(head))
            if end > len(head) and "\n" not in text[len(head):end]:
                return text[:end + len(tail)].rstrip("\n"), text[end + len(tail):]
    return None, text


def ranking_prompt(cue: str, words: Sequence[str], language: Language = "en") -> str:
    return _RANKING[language].format(cue=cue, words=_LIST_SEPARATOR[language].join(words))


def ranking_completion(order: Sequence[str], language: Language = "en") -> str:
    """A ranking answer in the form the reward parser reads: the heading, then "N: word" lines."""
    lines = "\n".join(f"{i + 1}: {word}" for i, word in enumerate(order))
    return f" {_RANKING_HEADING[language]}\n{lines}"


def survey_prompt(question: str, options: Sequence[str], language: Language = "en") -> str:
    """A multiple-choice prompt; the answer is the option number (see survey_option_labels)."""
    template, line = _SURVEY[language]
    lines = "\n".join(line.format(n=i + 1, option=o) for i, o in enumerate(options))
    return template.format(question=question, options=lines)


_QUESTION_HEADING = {"en": "Question:", "zh": "问题："}  # how _SURVEY's templates begin
_QUESTIONNAIRE_INTRO = {"en": "Survey questions about {topic}.\n\n", "zh": "关于{topic}的调查问题。\n\n"}


def questionnaire(topic: str, questions: Sequence[tuple[str, Sequence[str]]],
                  language: Language = "en") -> str:
    """Survey questions on one topic listed without answers, each as a survey prompt up to its
    answer line, then a blank line. The synthetic corpus holds such questionnaires (a real
    pretraining corpus does too); CultureSPA's question generation prompts with one and the
    next question's heading (:func:`questionnaire_heading`)."""
    answer_line = _SURVEY[language][0].rsplit("\n", 1)[1]
    items = "".join(survey_prompt(q, o, language).removesuffix(answer_line) + "\n"
                    for q, o in questions)
    return _QUESTIONNAIRE_INTRO[language].format(topic=topic) + items


def questionnaire_heading(language: Language = "en") -> str:
    """Where a question begins in a survey prompt ("Question:")."""
    return _QUESTION_HEADING[language]


# CultureSPA's question generation for chat models, after the authors' convention (a WVS social
# scientist as the system role; the topic, a few numbered example questions, "a new question
# unlike the examples", the answer as JSON with Question and Options); our own wording.
_QUESTION_WRITER = {
    "en": "You are a social scientist who designs World Values Survey questions to study how "
          "people's values differ across countries.\n",
    "zh": "你是一位为世界价值观调查设计问题、研究各国人们价值观差异的社会科学家。\n",
}
_QUESTION_REQUEST = {
    "en": 'Write one new survey question on the topic "{topic}".\nExample questions:\n'
          "{examples}\nYour question must be clearly different from the examples and about "
          '"{topic}". Reply with JSON only, in the form {{"Question": "...", "Options": '
          '["...", "..."]}}.',
    "zh": "请就“{topic}”这一主题写一个新的调查问题。\n示例问题：\n{examples}\n"
          "你的问题必须与示例明显不同，且关于“{topic}”。只用 JSON 回复，格式为"
          '{{"Question": "...", "Options": ["...", "..."]}}。',
}
_QUESTION_EXAMPLE = {"en": "#Example {n}:\nQuestion: {question}\nOptions: {options}\n",
                     "zh": "#示例{n}：\n问题：{question}\n选项：{options}\n"}


def question_request(topic: str, questions: Sequence[tuple[str, Sequence[str]]],
                     language: Language = "en") -> str:
    """An instruction to write a new survey question on ``topic`` as JSON, with the examples'
    options as JSON lists: the question writer's role (a chat model's system message), then the
    request (its user turn)."""
    examples = "".join(_QUESTION_EXAMPLE[language].format(
        n=i + 1, question=q, options=json.dumps(list(o), ensure_ascii=False))
        for i, (q, o) in enumerate(questions))
    return _QUESTION_WRITER[language] + _QUESTION_REQUEST[language].format(
        topic=topic, examples=examples)


def survey_option_labels(num_options: int) -> list[str]:
    """What the model writes after ``Answer:`` to pick each option (" 1", " 2", ...)."""
    return [f" {i + 1}" for i in range(num_options)]


_VALUE_QUESTION = {"en": 'Which value does this statement express? "{text}"',
                   "zh": "这句话表达了哪种价值观？“{text}”"}


def value_prompt(text: str, labels: Sequence[str], language: Language = "en") -> str:
    """Value identification as a multiple-choice survey item over the label names; the answer
    is read from the option labels' log-probabilities, like a survey answer."""
    return survey_prompt(_VALUE_QUESTION[language].format(text=text), labels, language)


_CCOT = {"en": "Before answering, think about what people from {culture} value and how they "
               "would see this question.\nThoughts:",
         "zh": "回答前，请先想一想{culture}的人重视什么、会如何看待这个问题。\n想法："}
_AFTER_THOUGHTS = {"en": "\nAnswer:", "zh": "\n回答："}


def ccot_prompt(question: str, options: Sequence[str], culture: str,
                language: Language = "en") -> str:
    """Cultural chain-of-thought (CultureSPA's CCoT): the culture preamble, the question, then a
    request to think about the culture's values first; the model writes its thoughts after
    this prompt and the answer is read after :func:`ccot_answer_suffix`."""
    survey = survey_prompt(question, options, language)
    question_part = survey[: survey.rindex(_AFTER_THOUGHTS[language].strip())]
    return (culture_preamble(culture, language) + question_part
            + _CCOT[language].format(culture=culture))


def ccot_answer_suffix(language: Language = "en") -> str:
    return _AFTER_THOUGHTS[language]


# Where a culture stands on a value dimension, from most for it to most against it.
_STANCES = {"en": ["hold {value} very dear", "value {value}", "are divided on {value}",
                   "care little for {value}", "reject {value}"],
            "zh": ["非常珍视{value}", "重视{value}", "对{value}看法不一", "不太在乎{value}",
                   "排斥{value}"]}
_THOUGHT = {"en": " People from {culture} {stance}.", "zh": "{culture}的人{stance}。"}
STANCE_LEVELS = len(_STANCES["en"])


def ccot_thought(culture: str, value: str, stance: int, language: Language = "en") -> str:
    """A CCoT thought as the synthetic corpus writes it after :func:`ccot_prompt`: where the
    culture stands on one value dimension (``stance`` 0 = most for it, see STANCE_LEVELS)."""
    return _THOUGHT[language].format(
        culture=culture, stance=_STANCES[language][stance].format(value=value))
