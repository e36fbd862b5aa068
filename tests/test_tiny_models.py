"""The test-built models behave like real checkpoints: they reload and score/generate."""

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def test_reward_model_reloads_with_one_label(tiny_reward_model):
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model)
    assert model.config.num_labels == 1
    ids = tok("Let me compute 12 + 30 = 42.", return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == tok.bos_token_id
    assert (ids["input_ids"][0] == tok.bos_token_id).sum() == 1
    with torch.no_grad():
        assert model(**ids).logits.shape == (1, 1)


def test_causal_lm_generates(tiny_causal_lm):
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
