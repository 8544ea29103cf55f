"""Prompt formatting through the chat template, and answer-only labels."""

import pytest

from medsweep.prompts import IGNORE_INDEX, chat_ids, prompt_ids, render, tokenize_example

REC = {"question": "What causes gout?", "answer": "Uric acid crystals in a joint."}
INSTRUCTION = "Answer briefly."


def test_chatml_rendering_of_smollm2(smol_tokenizer):
    prompt, completion = render(smol_tokenizer, REC, INSTRUCTION, "chat")
    assert prompt == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n"
                      "<|im_start|>user\nWhat causes gout?<|im_end|>\n<|im_start|>assistant\n")
    assert completion == "Uric acid crystals in a joint.<|im_end|>\n"


def test_alpaca_rendering(smol_tokenizer):
    prompt, completion = render(smol_tokenizer, REC, INSTRUCTION, "alpaca")
    assert prompt == "### Instruction:\nAnswer briefly.\n\n### Input:\nWhat causes gout?\n\n### Response:\n"
    assert completion == "Uric acid crystals in a joint." + smol_tokenizer.eos_token


def test_context_goes_into_the_input(smol_tokenizer):
    prompt, _ = render(smol_tokenizer, {**REC, "context": "Abstract text."}, INSTRUCTION, "chat")
    assert "Context: Abstract text.\n\nQuestion: What causes gout?" in prompt


def test_labels_cover_only_the_answer(smol_tokenizer):
    ex = tokenize_example(smol_tokenizer, REC, INSTRUCTION, "chat", max_seq_length=256)
    n_prompt = len(prompt_ids(smol_tokenizer, REC, INSTRUCTION, "chat"))
    assert ex["input_ids"][:n_prompt] == prompt_ids(smol_tokenizer, REC, INSTRUCTION, "chat")
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert smol_tokenizer.decode(answer) == "Uric acid crystals in a joint.<|im_end|>\n"
    assert not ex["truncated"] and ex["length"] == len(ex["input_ids"])


def test_truncation_and_overlong_prompt(smol_tokenizer):
    n_prompt = len(prompt_ids(smol_tokenizer, REC, INSTRUCTION, "chat"))
    ex = tokenize_example(smol_tokenizer, REC, INSTRUCTION, "chat", max_seq_length=n_prompt + 2)
    assert ex["truncated"] and len(ex["input_ids"]) == n_prompt + 2
    assert sum(t != IGNORE_INDEX for t in ex["labels"]) == 2
    assert tokenize_example(smol_tokenizer, REC, INSTRUCTION, "chat", max_seq_length=n_prompt) is None


class CharTokenizer:
    """One id per character; BOS (id 1, "<s>") added by the tokenizer when `adds` and special tokens are asked for;
    the chat template writes "<s>" itself when `template_bos`."""

    bos_token, bos_token_id = "<s>", 1

    def __init__(self, adds: bool, template_bos: bool):
        self.adds, self.template_bos = adds, template_bos

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return ("<s>" if self.template_bos else "") + "".join(f"[{m['content']}]" for m in messages) + ">"

    def __call__(self, text, add_special_tokens):
        return {"input_ids": ([1] if self.adds and add_special_tokens else []) + [ord(c) for c in text]}


@pytest.mark.parametrize(("adds", "template_bos", "bos"), [(True, False, [1]), (False, False, []), (True, True, [])])
def test_chat_ids_have_bos_exactly_once(adds, template_bos, bos):
    tok = CharTokenizer(adds, template_bos)
    written = ("<s>" if template_bos else "") + "[hi]>Correct: "
    assert chat_ids(tok, [{"role": "user", "content": "hi"}], "Correct: ") == bos + [ord(c) for c in written]


def test_chat_ids_of_smollm2_are_its_own_template(smol_tokenizer):
    messages = [{"role": "user", "content": "What is a fever?"}]
    text = smol_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat_ids(smol_tokenizer, messages) == smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(chat_ids(smol_tokenizer, messages, "Correct (1-5): ")).endswith(
        "assistant\nCorrect (1-5): ")
