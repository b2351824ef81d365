"""A synthetic tokenizer with the LLaDA special tokens at their real ids.

The real LLaDA / Dynin-Omni tokenizers cannot be downloaded here, and nothing on
PyPI ships them. This builds a byte-level tokenizer (one token per byte, no
merges) padded with inert filler entries up to id 126079, then adds the special
tokens at exactly the ids of ``GSAI-ML/LLaDA-8B-Instruct``'s
``tokenizer_config.json``. ``len(tokenizer)`` therefore equals the real value
the image and speech id offsets are computed from.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: First special-token id of the LLaDA tokenizer; ids below are BPE tokens.
FIRST_SPECIAL_ID = 126080

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MASK = "<|mdm_mask|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"


def llada_special_tokens() -> list[str]:
    """The LLaDA-8B special tokens, in id order from 126080 to 126348."""
    tokens = [BOS, EOS, "[CLS]", "[gMASK]"]
    tokens += [f"<|reserved_token_{i}|>" for i in range(252)]  # 126084..126335
    tokens.append(MASK)  # 126336
    tokens += [f"<|reserved_token_{i}|>" for i in range(252, 255)]  # ..126339
    tokens += ["<role>", "</role>"]  # 126340, 126341
    tokens += ["<|arithmetic_start|>", "<|arithmetic_end|>"]  # 126342, 126343
    tokens += ["<|number_start|>", "<|number_end|>"]  # 126344, 126345
    tokens += [START_HEADER, END_HEADER, EOT]  # 126346..126348
    return tokens


def chat_template(header_newlines: int) -> str:
    """The shipped chat template: Dynin/MMaDA (1 newline) or LLaDA (2)."""
    from dynin_vllm.serving.chat_templates import load

    return load({1: "dynin", 2: "llada"}[header_newlines])


def build_tokenizer(length: int, header_newlines: int = 1) -> PreTrainedTokenizerFast:
    """A tokenizer of ``length`` tokens with LLaDA's special tokens at their ids.

    ``length`` is 126349 for LLaDA/MMaDA and 126464 for Dynin-Omni; the ids past
    126348 are reserved fillers.
    """
    specials = llada_special_tokens()
    extra = length - FIRST_SPECIAL_ID - len(specials)
    if extra < 0:
        raise ValueError(f"length must be at least {FIRST_SPECIAL_ID + len(specials)}")
    specials += [f"<|dynin_reserved_{i}|>" for i in range(extra)]

    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    byte_symbols.sort()
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols)}
    for i in range(len(vocab), FIRST_SPECIAL_ID):
        vocab[f"<|filler_{i}|>"] = i  # never produced: there are no merges

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials]
    )
    assert tok.get_vocab_size(with_added_tokens=True) == length

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = chat_template(header_newlines)
    return fast


def save_tokenizer(out_dir: str | Path, length: int, header_newlines: int = 1) -> None:
    """Write the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``)."""
    build_tokenizer(length, header_newlines).save_pretrained(str(out_dir))
