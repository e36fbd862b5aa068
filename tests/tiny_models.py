"""Tiny transformers models built locally, so tests exercise real model code without a hub.

A byte-level BPE tokenizer is trained on a small corpus with `tokenizers`, and Llama models with two small
layers are created from a config. They are random (untrained) but real: same classes, same save/load path,
same padding and pooling behaviour as a full-size TRM-8B (`LlamaForSequenceClassification`).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Let me compute 12 + 30 = 42. So the answer is 42.",
    "Wait, that is wrong. Actually 7 * 8 = 56, not 54.",
    "Alternatively, we can factor the quadratic x^2 - 5x + 6 = (x - 2)(x - 3).",
    "Therefore the final answer is \\boxed{3}. Hmm, let me verify: 3 + 3 = 6.",
    "The problem asks how many seconds are in 7.8 minutes; 60 * 7.8 = 468.",
    "First, note that the sum of the digits 1 2 3 4 5 6 7 8 9 0 is 45.",
    "User: What is 2 + 3? Assistant: <think> 2 + 3 = 5 </think> The answer is 5.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_tokenizer(pad_token: bool = True, extra_corpus: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4 + list(extra_corpus), trainer)
    bos = tok.token_to_id("<s>")
    # Llama-style: BOS prepended by the tokenizer itself, so callers must not add a second one.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>" if pad_token else None)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(tokenizer, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **kw)


def make_reward_model(path: str | Path, *, pad_token: bool = True, seed: int = 0) -> Path:
    """A one-label `LlamaForSequenceClassification` + tokenizer saved at `path` (like TRM-8B, but tiny)."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    tok = make_tokenizer(pad_token=pad_token)
    model = LlamaForSequenceClassification(_config(tok, num_labels=1))
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_causal_lm(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny `LlamaForCausalLM` + tokenizer with a chat template, for policies and `transformers serve`."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = make_tokenizer()
    model = LlamaForCausalLM(_config(tok))
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
