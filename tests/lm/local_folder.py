"""A user's own causal-LM folder, as ``save_pretrained`` writes it, built offline in seconds: a tiny
random Llama (4 layers, width 32) and a word-level fast tokenizer with a chat template."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "the cat sat on the mat .",
    "a dog ran in the park and the cat slept .",
    "what is two plus two ? it is four .",
    "hello , how are you today ? i am well , thank you .",
    "name a colour . red is a colour and so is blue .",
    "the sun is hot and the moon is cold .",
    "ROMEO .",
]
SPECIALS = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(chat_template: bool = True):
    """A word-level ``PreTrainedTokenizerFast`` over :data:`SENTENCES` (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                        bos_token="<eos>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_llama(folder: Path, *, seed: int = 0, chat_template: bool = True, layers: int = 4) -> Path:
    """Write a random tiny Llama and its tokenizer into ``folder`` (a user's teacher folder)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI tests read stderr line by line
    tokenizer = tiny_tokenizer(chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


CONVERSATIONS = [
    [{"role": "user", "content": "what is two plus two ?"}, {"role": "assistant", "content": "it is four ."}],
    [{"role": "system", "content": "name a colour ."}, {"role": "user", "content": "hello , how are you today ?"},
     {"role": "assistant", "content": "i am well , thank you ."}],
    [{"role": "user", "content": "name a colour ."}, {"role": "assistant", "content": "red is a colour ."},
     {"role": "user", "content": "and so is ?"}, {"role": "assistant", "content": "blue ."}],
    [{"role": "user", "content": "the cat sat on the mat ?"}, {"role": "assistant", "content": "the cat slept ."}],
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversations(n: int) -> list[dict]:
    """``n`` rows ``{"messages": [...]}`` cycling over :data:`CONVERSATIONS`."""
    return [{"messages": CONVERSATIONS[i % len(CONVERSATIONS)]} for i in range(n)]
