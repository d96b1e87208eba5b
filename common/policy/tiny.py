"""Shared pieces of the tiny pipelines (cpu-tiny profile): tokenizers, the VL processor, seeding.

Tiny pipelines are the real diffusers pipeline classes with small configs (docs/measurements.md
§3), built entirely in code: no hub, no network, no files. Each family builds its own in its module
(common/policy/families/); weights are seeded, so the same seed gives bit-identical models in every
process (generators and learner agree without shipping weights).
"""
from __future__ import annotations

import torch

__all__ = ["tiny_tokenizer", "tiny_processor", "seeded", "small_word_tokenizer"]

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


def tiny_tokenizer():
    """Byte-level Qwen2 tokenizer (264 tokens; specials at 256..263) with a chat template (recipe A)."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = {c: i for i, c in enumerate(sorted(set(bytes_to_unicode().values())))}
    for s in _SPECIALS:
        vocab[s] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    # Flux2Klein renders the prompt through the chat template (enable_thinking is ignored here)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def tiny_processor(tok):
    """Qwen2-VL processor without torchvision (recipe C)."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    class _Proc(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return _Proc(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tok, video_processor=None)


def seeded(seed: int):
    """A forked global RNG seeded with ``seed``: building draws from it, the caller's RNG is left alone."""
    rng = torch.random.fork_rng(devices=[])
    rng.__enter__()
    torch.manual_seed(seed)
    return rng


# --- the "small" profile's tokenizer (docs/measurements.md §8) ---

# whole words of the synthetic task's prompts (common/synthetic/prompts.py + subject names); anything
# else maps to [UNK]. Lower-cased by the tokenizer's normaliser.
_SMALL_WORDS = """a adopts aesthetics against an and artistic as at backdrop background blue body bottom center
circle cross cyan diamond dotted everything follow from generated green image in is left light lighting like
magenta make matching of orange overall place pose position purple put red reference render resemble
resembling right ring scene semicircle set should shown sits skeleton square star striped style
stylistically takes the top triangle use visual white with yellow user assistant system""".split()


def small_word_tokenizer():
    """Word-level tokenizer (task words, digits, punctuation, Qwen specials) so a 6-reference prompt
    fits ~100 tokens instead of ~400 bytes; same chat template as :func:`tiny_tokenizer`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(_SPECIALS + sorted(set(_SMALL_WORDS)) + list("0123456789.,()'-:;!?")
                                        + ["[UNK]"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    # the chat template of tiny_tokenizer (building that byte tokenizer just to copy it costs ~2 s)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok
