"""A model split across two GPUs (device_map=auto, the `model_split` mode): the answer-only loss and the
perplexity run each op where its operands are and return the loss on the labels' device. Checked with pretend
GPUs (tests/fake_devices.py): the decoder's first half and the tied embedding / LM head on cuda:0, the second
half and the final norm on cuda:1, as accelerate places a 2-GPU split."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from medsweep import kernels
from tests.fake_devices import FakeDevices, place, tag, tag_of


def _split_llama(tied: bool):
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                  tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    place(model.model.embed_tokens, "cuda:0")
    place(model.model.rotary_emb, "cuda:0")
    place(model.model.layers[0], "cuda:0")
    place(model.model.layers[1], "cuda:1")
    place(model.model.norm, "cuda:1")
    if not tied:
        place(model.lm_head, "cuda:0")  # the head on the first GPU too, as with a tied head
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    mask = torch.ones_like(ids)
    return ids, mask, labels


@pytest.mark.parametrize("tied", [True, False])
def test_answer_loss_on_a_model_split_across_two_gpus(tied):
    model = _split_llama(tied)
    ids, mask, labels = _batch()
    with torch.no_grad():
        expected, n_expected = kernels.answer_loss_sum(model, ids, mask, labels)  # all on the CPU
    fake = FakeDevices()
    with fake:
        ids_, mask_, labels_ = (tag(t.clone(), "cuda:0") for t in (ids, mask, labels))
        with torch.no_grad():
            loss, n = kernels.answer_loss_sum(model, ids_, mask_, labels_)
        assert tag_of(loss) == "cuda:0" and tag_of(n) == "cuda:0"  # the labels' device
    assert not fake.mixed
    assert torch.allclose(loss, expected) and int(n) == int(n_expected) == 14


def test_the_fake_devices_catch_what_a_split_model_would_hit():
    """The pretend GPUs fail exactly where CUDA would: the hidden states of the last GPU indexed with a mask on
    the first (what answer_loss_sum did before it moved the mask)."""
    model = _split_llama(tied=True)
    ids, mask, labels = _batch()
    with FakeDevices(), torch.no_grad():
        ids_, mask_, labels_ = (tag(t.clone(), "cuda:0") for t in (ids, mask, labels))
        hidden = model.model(input_ids=ids_, attention_mask=mask_).last_hidden_state
        assert tag_of(hidden) == "cuda:1"
        with pytest.raises(RuntimeError, match="same device"):
            hidden[:, :-1][labels_[:, 1:] != -100]
