"""umT5 tokenizer wrapper: fixed length, EOS, mask, Wan's cleaning, same ids as transformers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from wan_engine.tokenizer import EOS_ID, PAD_ID, T5Tokenizer, clean_prompt, write_tiny_tokenizer

TEXT_LEN = 16
PROMPTS = [
    "a cat walking on the beach at sunset",
    "",
    "Cinematic wide shot, a red car drives through the city at night; camera pans slowly.",
    "zoom   into\tthe\nforest",
    "caf\u00e9 \uff21\uff22 \ufb01re 42% \u00d7 \u65e5\u672c",  # composed accent, full-width, ligature, CJK
]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_umt5"))


@pytest.fixture(scope="module")
def tokenizer(tiny_file: Path) -> T5Tokenizer:
    return T5Tokenizer(tiny_file.parent, TEXT_LEN)


def real_length(mask_row: torch.Tensor) -> int:
    return int(mask_row.sum())


def test_returns_long_ids_and_mask_of_text_len(tokenizer: T5Tokenizer):
    ids, mask = tokenizer(PROMPTS)
    assert ids.shape == mask.shape == (len(PROMPTS), TEXT_LEN)
    assert ids.dtype == mask.dtype == torch.long


def test_mask_is_ones_then_zeros_over_pad_ids(tokenizer: T5Tokenizer):
    ids, mask = tokenizer(PROMPTS)
    for id_row, mask_row in zip(ids, mask):
        n = real_length(mask_row)
        assert mask_row[:n].eq(1).all() and mask_row[n:].eq(0).all()
        assert id_row[n:].eq(PAD_ID).all()
        assert id_row[:n].ne(PAD_ID).all()


def test_eos_is_the_last_real_token(tokenizer: T5Tokenizer):
    ids, mask = tokenizer(["a cat", "a dog walking slowly through the forest"])
    for id_row, mask_row in zip(ids, mask):
        n = real_length(mask_row)
        assert id_row[n - 1] == EOS_ID
        assert id_row[: n - 1].ne(EOS_ID).all()


def test_empty_prompt_is_a_lone_eos(tokenizer: T5Tokenizer):
    ids, mask = tokenizer([""])
    assert ids[0, 0] == EOS_ID and real_length(mask[0]) == 1


def test_long_prompt_is_truncated_keeping_eos(tokenizer: T5Tokenizer):
    ids, mask = tokenizer(["the sun " * TEXT_LEN])
    assert mask.eq(1).all()
    assert ids[0, -1] == EOS_ID
    short_ids, _ = tokenizer(["the sun " * (TEXT_LEN // 4)])
    assert torch.equal(ids[0, : TEXT_LEN // 2], short_ids[0, : TEXT_LEN // 2])


def test_same_ids_and_mask_as_transformers_fast_tokenizer(tokenizer: T5Tokenizer, tiny_file: Path):
    reference = PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_file), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    prompts = PROMPTS + ["the sun " * TEXT_LEN]
    expected = reference(
        [clean_prompt(p) for p in prompts], padding="max_length", truncation=True, max_length=TEXT_LEN
    )
    ids, mask = tokenizer(prompts)
    assert ids.tolist() == expected["input_ids"]
    assert mask.tolist() == expected["attention_mask"]


def test_whitespace_runs_and_edges_do_not_change_ids(tokenizer: T5Tokenizer):
    ids, _ = tokenizer(["  a cat\n\n on\tthe  beach ", "a cat on the beach"])
    assert torch.equal(ids[0], ids[1])


def test_html_entities_are_unescaped_twice_like_wan():
    assert clean_prompt("rock &amp;amp; roll &lt;3") == "rock & roll <3"


def test_curly_quotes_become_straight_quotes_like_ftfy():
    assert clean_prompt("\u201cit\u2019s\u201d") == "\"it's\""


def test_decomposed_accents_are_composed():
    assert clean_prompt("cafe\u0301") == "caf\u00e9"


def test_accepts_the_tokenizer_json_itself(tiny_file: Path, tokenizer: T5Tokenizer):
    from_file = T5Tokenizer(tiny_file, TEXT_LEN)
    assert torch.equal(from_file(PROMPTS)[0], tokenizer(PROMPTS)[0])


def test_missing_tokenizer_json_names_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        T5Tokenizer(tmp_path, TEXT_LEN)


def test_tiny_tokenizer_has_umt5_special_ids(tiny_file: Path):
    reference = PreTrainedTokenizerFast(tokenizer_file=str(tiny_file))
    assert reference.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]


def test_tiny_tokenizer_is_byte_for_byte_reproducible(tmp_path: Path, tiny_file: Path):
    """Same bytes when written again, also from a fresh process with another hash seed."""
    again = write_tiny_tokenizer(tmp_path / "again")
    code = "import sys; from wan_engine.tokenizer import write_tiny_tokenizer; write_tiny_tokenizer(sys.argv[1])"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    repo_root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "fresh")], check=True, env=env, cwd=repo_root)
    assert again.read_bytes() == tiny_file.read_bytes()
    assert (tmp_path / "fresh" / "tokenizer.json").read_bytes() == tiny_file.read_bytes()
