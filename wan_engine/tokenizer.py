"""umT5 tokenizer: Wan's prompt cleaning + the `tokenizers` library + fixed-length padding.

Wan encodes every prompt as exactly `text_len` (512) tokens: the SentencePiece pieces, then `</s>`,
then `<pad>` (id 0) up to `text_len`; over-long prompts are cut so that `</s>` is still the last
real token. The mask tells the text encoder which positions are real.
"""
from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from wan_engine.registry import TOKENIZER_FILE

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
_SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in every T5 SentencePiece vocabulary
_METASPACE = "\u2581"

# Curly quotes that ftfy's default `uncurl_quotes` fix straightens (U+02BC, U+2018..U+201B; U+201C..U+201F).
_CURLY_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_CURLY_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_WHITESPACE_RUN = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'` prompt cleaning, without ftfy.

    Wan runs `ftfy.fix_text`, `html.unescape` twice, then collapses whitespace. ftfy is not a
    dependency here; we apply the parts of its default fixes that change tokens for ordinary
    prompts (NFC composition, straight quotes) and skip its mojibake repair (re-decoding text that
    was mis-decoded as Latin-1 / cp1252), which only matters for already-corrupted input. Ligatures
    and full-width forms are folded by the tokenizer's own NFKC normaliser.
    """
    text = unicodedata.normalize("NFC", text)
    text = _CURLY_SINGLE_QUOTES.sub("'", text)
    text = _CURLY_DOUBLE_QUOTES.sub('"', text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE_RUN.sub(" ", text).strip()


class T5Tokenizer:
    """Turns prompts into fixed-length umT5 ids and masks.

    `path` is a folder holding `tokenizer.json` (the umT5 file shipped with google/umt5-xxl and
    Wan2GP's `umt5-xxl/` folder) or the file itself.
    """

    def __init__(self, path: str | Path, text_len: int):
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no umT5 tokenizer at {file} (expected a {TOKENIZER_FILE})")
        self.text_len = text_len
        self._tokenizer = Tokenizer.from_file(str(file))
        pad_token = self._tokenizer.id_to_token(PAD_ID)
        # Truncation leaves room for the post-processor's `</s>`, so it survives cutting.
        self._tokenizer.enable_truncation(max_length=text_len)
        self._tokenizer.enable_padding(length=text_len, pad_id=PAD_ID, pad_token=pad_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (the encoder's embedding may be larger)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (ids, mask), both long [B, text_len]; mask is 1 on pieces and `</s>`, 0 on padding."""
        encodings = self._tokenizer.encode_batch([clean_prompt(t) for t in texts], add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids.reshape(len(texts), self.text_len), mask.reshape(len(texts), self.text_len)


# Fixed vocabulary of the tiny tokenizer: whole words for typical video prompts, a few suffixes, and
# every printable ASCII character so that any ASCII prompt tokenizes without <unk>.
_TINY_WORDS = (
    "a an the of in on at to and with from by for is are as into over under near through "
    "cat dog bird fish horse person man woman child people car boat train city street forest "
    "beach sea ocean river mountain sky cloud sun moon night day sunset sunrise light rain snow "
    "fire water tree flower house road field garden room window camera shot video scene frame "
    "walk run fly swim dance jump turn look move slow slowly fast quickly gently smooth "
    "red green blue yellow white black golden bright dark warm cold big small tall old young "
    "beautiful cinematic realistic detailed high quality style motion background foreground "
    "close up wide pan zoom travel between image images start end first last transition"
).split()
_TINY_SUFFIXES = ("s", "es", "ed", "ing", "ly", "er", "est")
_TINY_CHARACTERS = tuple(chr(c) for c in range(33, 127))  # printable ASCII without space
_WORD_SCORE = -4.0  # log-probabilities: a known word always beats spelling it out
_SUFFIX_SCORE = -6.0
_METASPACE_SCORE = -8.0
_CHARACTER_SCORE = -10.0


def _tiny_vocabulary() -> list[tuple[str, float]]:
    """(piece, log-probability) pairs in id order: specials, metaspace, words, suffixes, characters."""
    vocab = [(piece, 0.0) for piece in _SPECIAL_PIECES]
    vocab.append((_METASPACE, _METASPACE_SCORE))
    vocab += [(_METASPACE + word, _WORD_SCORE) for word in _TINY_WORDS]
    vocab += [(suffix, _SUFFIX_SCORE) for suffix in _TINY_SUFFIXES]
    vocab += [(char, _CHARACTER_SCORE) for char in _TINY_CHARACTERS if char not in _TINY_SUFFIXES]
    return vocab


TINY_TOKENIZER_VOCAB_SIZE = len(_tiny_vocabulary())


def _build_tiny_tokenizer() -> Tokenizer:
    """A small umT5-shaped tokenizer: the same pipeline as the real tokenizer.json, tiny vocabulary.

    Same components as umT5's file: Unigram model (unk id 2, no byte fallback), NFKC normaliser
    (the real file has SentencePiece's precompiled NFKC map), whitespace split + Metaspace
    pre-tokenizer, `$A </s>` post-processor, Metaspace decoder, and <pad>/</s>/<unk> as special tokens.
    """
    tokenizer = Tokenizer(Unigram(_tiny_vocabulary(), unk_id=UNK_ID, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    tokenizer.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in _SPECIAL_PIECES])
    return tokenizer


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Writes the tiny tokenizer as `folder/tokenizer.json` (byte-for-byte reproducible); returns the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / TOKENIZER_FILE
    file.write_text(_build_tiny_tokenizer().to_str(pretty=True) + "\n", encoding="utf-8")
    return file
