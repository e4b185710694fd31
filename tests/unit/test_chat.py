"""How a model reads a prompt (culture_rl/models/chat.py): byte for byte for a tokenizer
without a chat template, the template with the culture preamble as the system message for one
with it, in English and Chinese; stop ids; rollout masks on several stop ids."""

import pytest
import torch

from culture_rl.data import prompts
from culture_rl.models.chat import (AnswerBegun, answer_text, apply_choice, chat_prompt, messages,
                                    sft_example, stop_token_ids, uses_chat)
from culture_rl.models.loading import train_tokenizer
from culture_rl.inference.rollout import response_mask

# ChatML, the format of SmolLM2 and Qwen2.5 (trimmed of their default system message).
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def raw_tokenizer():
    return train_tokenizer(["Cue: dog\nAnswer: cat, bone", "提示词：狗 回答：猫"] * 20, 300)


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = train_tokenizer(["Cue: dog\nAnswer: cat, bone", "提示词：狗 回答：猫"] * 20, 300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


@pytest.mark.parametrize("language", ["en", "zh"])
def test_without_a_template_the_prompt_is_unchanged_byte_for_byte(raw_tokenizer, language):
    text = prompts.culture_preamble("Borenia", language) + prompts.association_prompt(
        "dog", language)
    assert not uses_chat(raw_tokenizer)
    assert chat_prompt(raw_tokenizer, text) == text
    assert answer_text(raw_tokenizer, " 1") == " 1"
    assert sft_example(raw_tokenizer, text, " cat, bone") == {"prompt": text,
                                                               "completion": " cat, bone"}


@pytest.mark.parametrize("language, culture", [("en", "Borenia"), ("zh", "博雷尼亚")])
def test_the_culture_preamble_becomes_the_system_message(chat_tokenizer, language, culture):
    question = prompts.survey_prompt("Is family important?", ["yes", "no"], language)
    text = prompts.culture_preamble(culture, language) + question
    system = prompts.culture_preamble(culture, language).strip()
    assert messages(text) == [{"role": "system", "content": system},
                              {"role": "user", "content": question.strip()}]
    rendered = chat_prompt(chat_tokenizer, text)
    assert rendered == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                        f"{question.strip()}<|im_end|>\n<|im_start|>assistant\n")
    # Without a preamble there is no system message.
    assert chat_prompt(chat_tokenizer, question).startswith("<|im_start|>user\n")


def test_chat_template_none_reads_raw_text_whatever_the_tokenizer():
    tokenizer = train_tokenizer(["Cue: dog\nAnswer: cat"] * 20, 300)
    tokenizer.chat_template = CHATML
    text = prompts.culture_preamble("Borenia") + prompts.association_prompt("dog")
    assert apply_choice(tokenizer, "auto") is tokenizer and uses_chat(tokenizer)
    apply_choice(tokenizer, "none")
    assert not uses_chat(tokenizer) and chat_prompt(tokenizer, text) == text
    with pytest.raises(ValueError, match="'auto' or 'none'"):
        apply_choice(tokenizer, "chatml")


def test_a_template_without_a_system_role_gets_the_preamble_in_the_users_turn():
    tokenizer = train_tokenizer(["Cue: dog\nAnswer: cat"] * 20, 300)
    tokenizer.chat_template = (  # as Gemma's: a system message is an error
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    text = prompts.culture_preamble("Borenia") + prompts.association_prompt("dog")
    assert chat_prompt(tokenizer, text) == (
        "<start_of_turn>user\nYou are a person from Borenia.\n"
        f"{prompts.association_prompt('dog')}<end_of_turn>\n<start_of_turn>model\n")
    (turn,) = sft_example(tokenizer, text, " cat")["prompt"]  # SFT rows alike
    assert turn["role"] == "user" and turn["content"].startswith("You are a person from")


def test_answers_start_the_assistants_turn(chat_tokenizer):
    assert answer_text(chat_tokenizer, " 1") == "1"
    row = sft_example(chat_tokenizer, prompts.association_prompt("dog"), " cat, bone")
    assert row["prompt"] == [{"role": "user", "content": prompts.association_prompt("dog")}]
    assert row["completion"] == [{"role": "assistant", "content": "cat, bone"}]


@pytest.mark.parametrize("language, culture", [("en", "Borenia"), ("zh", "博雷尼亚")])
def test_ccot_thoughts_continue_the_assistants_turn(raw_tokenizer, chat_tokenizer, language,
                                                    culture):
    head = prompts.ccot_prompt("Is family important?", ["yes", "no"], culture, language)
    written = "They value family." + prompts.ccot_answer_suffix(language)
    begun = AnswerBegun(head, written)
    # A base model reads the text it always read: head + thoughts + "Answer:".
    assert chat_prompt(raw_tokenizer, begun) == head + written
    # A chat model: the question in the user's turn, the thoughts in its own turn, and the
    # option label after "Answer:" keeps its space.
    rendered = chat_prompt(chat_tokenizer, begun)
    assert rendered == chat_prompt(chat_tokenizer, head) + written
    assert rendered.endswith("<|im_start|>assistant\n" + written)
    assert answer_text(chat_tokenizer, " 1", begun=True) == " 1"


def test_option_scores_read_the_label_where_the_answer_stands(chat_tokenizer):
    """A begun answer scores " 1" after "Answer:"; a fresh turn scores "1" at its start: the
    two differ, so the label is read where the prompt leaves it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from culture_rl.inference.generation import option_distributions

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=16,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32))
    chat_tokenizer.pad_token = chat_tokenizer.pad_token or chat_tokenizer.eos_token
    head = prompts.ccot_prompt("Is family important?", ["yes", "no"], "Borenia")
    written = "They value family." + prompts.ccot_answer_suffix()
    labels = [prompts.survey_option_labels(2)]
    begun = option_distributions(model, chat_tokenizer, [AnswerBegun(head, written)], labels)
    joined = option_distributions(model, chat_tokenizer, [head + written], labels)
    assert begun != joined  # the thoughts sit in another turn
    assert abs(sum(begun[0]) - 1) < 1e-6


def test_stop_ids_add_the_models_end_of_turn(chat_tokenizer):
    class Model:  # a generation config listing two EOS ids, as Llama 3's does
        class generation_config:
            eos_token_id = [7, chat_tokenizer.eos_token_id]

    assert stop_token_ids(chat_tokenizer) == [chat_tokenizer.eos_token_id]
    assert stop_token_ids(chat_tokenizer, Model()) == [chat_tokenizer.eos_token_id, 7]


def test_the_rollout_mask_ends_at_the_first_of_several_stop_ids():
    responses = torch.tensor([[5, 7, 9, 9], [5, 6, 2, 7], [5, 6, 6, 6]])
    assert response_mask(responses, [2, 7]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0],
                                                         [1, 1, 1, 1]]
    assert response_mask(responses, 9).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("text", ["Elders in Borenia say the old customs should be kept.",
                                  "博雷尼亚的长者说应当保留旧习俗。"])
def test_a_statement_is_read_as_the_users_turn_and_only_its_own_tokens_count(
        raw_tokenizer, chat_tokenizer, text):
    from culture_rl.models.chat import statement_ids

    ids, own = statement_ids(raw_tokenizer, text)  # no template: the text, byte for byte
    assert ids == raw_tokenizer(text, add_special_tokens=False)["input_ids"] and all(own)
    ids, own = statement_ids(chat_tokenizer, text)
    rendered = chat_tokenizer.decode(ids)
    assert rendered.startswith("<|im_start|>user\n") and rendered.endswith("<|im_start|>assistant\n")
    mine = chat_tokenizer.decode([t for t, o in zip(ids, own) if o])
    assert mine.replace(" ", "") == text.replace(" ", "")  # the statement's tokens, no template
    assert not own[0] and not own[-1]
