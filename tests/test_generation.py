"""medsweep/generation.py: the decode loop and the next-token distributions, against the models' own computations.

Evaluation's answers (test_evaluate, test_zoo), synth's generator (test_synth), the judge's scores (test_judge) and a
pack's mixed batches (test_mixed) go through this module; these tests pin what those leave open: positions against
the model's own, special tokens in the answers, the tokenizer left as found, no deprecated cache keyword."""

from __future__ import annotations

import warnings

import pytest
import torch

from medsweep.generation import decoding, generate_batched, next_token_probs, next_token_probs_after
from medsweep.hardware import Hardware
from tests.conftest import forced_lm_head

CPU = Hardware(device="cpu", precision="fp32", threads=1)


def _tiny(config_class: str, tokenizer, **sizes):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), **sizes)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tiny_llama(smol_tokenizer):
    """Rotary positions: only the distances between positions matter."""
    return _tiny("LlamaConfig", smol_tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def tiny_gpt2(smol_tokenizer):
    """Learned absolute positions: every position counts."""
    return _tiny("GPT2Config", smol_tokenizer, n_embd=32, n_layer=2, n_head=2, n_positions=128)


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2"])
def test_next_token_probs_equal_the_models_own_forward_padded_or_not(model_name, smol_tokenizer, request):
    """The distribution after each prompt, in a left-padded batch, is the model's own softmax over the prompt alone
    with its default positions 0, 1, 2 ... (a shift or a repeated position changes it: GPT-2 learned every
    position, a rotary model the distances)."""
    model = request.getfixturevalue(model_name)
    prompts = [smol_tokenizer.encode(f"Question {'long ' * n}?") for n in (0, 5, 17)]
    probs = next_token_probs(model, smol_tokenizer, prompts, CPU, batch_size=3)
    assert probs.shape == (3, len(smol_tokenizer)) and probs.dtype == torch.float32
    with torch.no_grad():
        own = torch.stack([torch.softmax(model(torch.tensor([p])).logits[0, -1].float(), -1) for p in prompts])
    assert torch.allclose(probs.log(), own.log(), atol=1e-4)


def test_continuations_equal_the_models_own_forward_over_prefix_and_continuation(tiny_gpt2, smol_tokenizer):
    prefixes = [smol_tokenizer.encode("A short one?"), smol_tokenizer.encode("A much longer question than that?")]
    ends = [[smol_tokenizer.encode(" Yes"), smol_tokenizer.encode(" It is not")] for _ in prefixes]
    probs = next_token_probs_after(tiny_gpt2, smol_tokenizer, prefixes, ends, CPU, batch_size=2)
    with torch.no_grad():
        own = torch.stack([torch.stack([torch.softmax(tiny_gpt2(torch.tensor([p + e])).logits[0, -1].float(), -1)
                                        for e in row]) for p, row in zip(prefixes, ends, strict=True)])
    assert torch.allclose(probs.log(), own.log(), atol=1e-4)


def test_no_prompts_no_distributions_and_the_tokenizer_left_as_found(tiny_llama, smol_tokenizer):
    assert next_token_probs_after(tiny_llama, smol_tokenizer, [], [], CPU, batch_size=2).shape == (0, 0, 0)
    smol_tokenizer.padding_side = "right"
    next_token_probs_after(tiny_llama, smol_tokenizer, [smol_tokenizer.encode("Hi")],
                           [[smol_tokenizer.encode(" there")]], CPU, 1)
    assert smol_tokenizer.padding_side == "right"
    with pytest.raises(ValueError, match="^every prefix needs the same number of continuations$"):
        next_token_probs_after(tiny_llama, smol_tokenizer, [[1], [2]], [[[3]], [[3], [4]]], CPU, 2)
    assert smol_tokenizer.padding_side == "right"


def test_continuations_use_the_current_cache_keyword(tiny_llama, smol_tokenizer):
    """transformers 5.24 renamed past_key_values to cache; the old keyword warns, and goes in 5.40."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        next_token_probs_after(tiny_llama, smol_tokenizer, [smol_tokenizer.encode("Hi")],
                               [[smol_tokenizer.encode(" there")]], CPU, 1)
    assert not [w for w in caught if "deprecated" in str(w.message)]


def test_special_tokens_other_than_the_stop_are_left_out_of_the_answer(tiny_llama, smol_tokenizer):
    word = smol_tokenizer.convert_tokens_to_ids("yes")
    special = smol_tokenizer.convert_tokens_to_ids("<|im_start|>")  # special, and not a stop token of this model
    with forced_lm_head(tiny_llama, [word, special, word, smol_tokenizer.eos_token_id]):
        done = generate_batched(tiny_llama, smol_tokenizer, [smol_tokenizer.encode("Say yes")], CPU, 1, 8,
                                decoding(False))
    assert (done[0].text, done[0].tokens, done[0].ended) == ("yesyes", 3, True)


def test_progress_counts_whole_prompts_with_copies(tiny_llama, smol_tokenizer):
    prompts = [smol_tokenizer.encode(f"Question {'long ' * n}?") for n in (1, 2, 3)]
    seen: list[object] = []
    done = generate_batched(tiny_llama, smol_tokenizer, prompts, CPU, 2, 2, decoding(False), on_batch=seen.append,
                            copies=2)
    assert len(done) == 6 and seen == [2, 3] and all(type(n) is int for n in seen)
