"""Small causal language models built from a transformers config (nothing is downloaded).

The builders return plain ``transformers`` models (``GPT2LMHeadModel``, ``LlamaForCausalLM``), so a
trained one is exported with ``save_pretrained`` and reloads with ``AutoModelForCausalLM``.
Input and output embeddings are *not* tied: an export's ``model.safetensors`` then holds every
entry of the ``state_dict``, which the engine reloads strictly (a trained teacher on resume,
``teacher.checkpoint``); tying would drop ``lm_head.weight`` from the file.

Special ids follow :mod:`anydistill.data.tokenizers`: ``pad = 0``, ``bos = eos = 1``.
"""

from __future__ import annotations

from typing import Any

from anydistill.core.recipe import NonNegativeFloat, PositiveInt
from anydistill.data.tokenizers import EOS_ID, PAD_ID


def _heads_problem(builder: str, width: int, heads: int) -> None:
    if width % heads:
        raise ValueError(f"The 'n_head' parameter of {builder} must divide n_embd={width}. Got {heads}.")


def gpt2_lm(
    input_shape: Any = None,
    num_classes: Any = None,
    *,
    vocab_size: PositiveInt,
    n_layer: PositiveInt = 2,
    n_embd: PositiveInt = 128,
    n_head: PositiveInt = 4,
    n_positions: PositiveInt = 256,
    dropout: NonNegativeFloat = 0.0,
):
    """A GPT-2 (learned positions, GELU MLP, LayerNorm) of ``n_layer`` blocks of width ``n_embd``.

    ``input_shape`` and ``num_classes`` are injected by the engine for classifiers and ignored:
    ``vocab_size`` must cover the tokenizer (checked when a method starts, `lm.vocab`).
    Maps ``input_ids`` [B, L] (L <= ``n_positions``) to an output whose ``logits`` are [B, L, vocab_size].
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    _heads_problem("gpt2-lm", n_embd, n_head)
    config = GPT2Config(
        vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
    )
    return GPT2LMHeadModel(config)


def llama_lm(
    input_shape: Any = None,
    num_classes: Any = None,
    *,
    vocab_size: PositiveInt,
    n_layer: PositiveInt = 2,
    n_embd: PositiveInt = 128,
    n_head: PositiveInt = 4,
    n_positions: PositiveInt = 256,
    intermediate_size: PositiveInt | None = None,
):
    """A Llama (RoPE, SwiGLU, RMSNorm) of ``n_layer`` blocks of width ``n_embd``; the MLP is
    ``intermediate_size`` wide (default ``4 * n_embd``). Same inputs and outputs as `gpt2_lm`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _heads_problem("llama-lm", n_embd, n_head)
    config = LlamaConfig(
        vocab_size=vocab_size, num_hidden_layers=n_layer, hidden_size=n_embd, num_attention_heads=n_head,
        num_key_value_heads=n_head, intermediate_size=intermediate_size or 4 * n_embd,
        max_position_embeddings=n_positions, bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)
