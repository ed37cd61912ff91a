"""umT5 encoder: same outputs as transformers' UMT5EncoderModel, official names, bfloat16 loading."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import UMT5EncoderModel, UMT5ForConditionalGeneration
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from reference_configs import transformers_config
from wan_engine.nn.t5 import (
    RELATIVE_MAX_DISTANCE,
    TINY_UMT5,
    UMT5_XXL,
    UMT5Encoder,
    relative_position_buckets,
    transformers_to_official,
)
from wan_engine.tokenizer import T5Tokenizer, write_tiny_tokenizer
from wan_engine.weights import load_model, save_state_dict

# Two tiny configs: dim_attn == dim, and dim_attn != dim with an odd head count.
CONFIGS = {
    0: dict(vocab=97, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32),
    1: dict(vocab=61, dim=24, dim_attn=30, dim_ffn=40, num_heads=3, num_layers=3, num_buckets=16),
}
SEQ_LEN = 160  # longer than RELATIVE_MAX_DISTANCE, so the saturated far buckets are exercised
REAL_LENGTHS = (SEQ_LEN, 75, 3)  # one batch, three padding amounts


def random_reference(cfg: dict, seed: int) -> UMT5EncoderModel:
    """transformers' encoder with every weight drawn at a scale where all terms matter."""
    torch.manual_seed(seed)
    model = UMT5EncoderModel(transformers_config(cfg)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 1.0 if "relative_attention_bias" in name else param.shape[-1] ** -0.5)
    return model


def padded_batch(vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(REAL_LENGTHS), SEQ_LEN), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(REAL_LENGTHS):
        mask[row, :length] = 1
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_transformers_on_real_positions(seed: int, tmp_path: Path):
    cfg = CONFIGS[seed]
    reference = random_reference(cfg, seed)
    reference.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    ours = load_model(lambda: UMT5Encoder(**cfg), [file], dtype=torch.float32, key_map=transformers_to_official)
    ids, mask = padded_batch(cfg["vocab"], seed)

    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        actual = ours(ids, mask)

    for row, length in enumerate(REAL_LENGTHS):
        want, got = expected[row, :length], actual[row, :length]
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def seeded_encoder_and_batch() -> tuple[UMT5Encoder, torch.Tensor, torch.Tensor]:
    """A seeded encoder of the first tiny config and a padded batch for it: (model, ids, mask)."""
    cfg = CONFIGS[0]
    torch.manual_seed(0)
    return UMT5Encoder(**cfg).eval(), *padded_batch(cfg["vocab"], seed=0)


def test_padding_does_not_change_real_positions():
    model, ids, mask = seeded_encoder_and_batch()
    length = REAL_LENGTHS[1]
    with torch.no_grad():
        padded = model(ids, mask)[1, :length]
        alone = model(ids[1:2, :length], mask[1:2, :length])[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_padded_positions_are_zero_as_wan_feeds_the_dit():
    model, ids, mask = seeded_encoder_and_batch()
    with torch.no_grad():
        out = model(ids, mask)
    assert out[mask == 0].eq(0).all()
    assert out[mask == 1].ne(0).any(dim=-1).all()


@pytest.mark.parametrize("num_buckets", [32, 16])
def test_relative_position_buckets_match_transformers(num_buckets: int):
    length = 2 * RELATIVE_MAX_DISTANCE + 40
    config = transformers_config(dict(CONFIGS[0], num_buckets=num_buckets))
    attention = UMT5Attention(config, has_relative_attention_bias=True)
    positions = torch.arange(length)
    expected = attention._relative_position_bucket(positions[None, :] - positions[:, None])
    assert torch.equal(relative_position_buckets(length, num_buckets), expected)


def test_parameter_names_are_the_official_wan_names():
    cfg = CONFIGS[0]
    per_block = [
        "norm1.weight",
        "attn.q.weight",
        "attn.k.weight",
        "attn.v.weight",
        "attn.o.weight",
        "norm2.weight",
        "ffn.gate.0.weight",
        "ffn.fc1.weight",
        "ffn.fc2.weight",
        "pos_embedding.embedding.weight",
    ]
    official = {"token_embedding.weight", "norm.weight"}
    official |= {f"blocks.{n}.{name}" for n in range(cfg["num_layers"]) for name in per_block}
    assert set(UMT5Encoder(**cfg).state_dict()) == official


def test_full_transformers_umt5_checkpoint_loads_without_its_decoder(tmp_path: Path):
    cfg = CONFIGS[0]
    full = UMT5ForConditionalGeneration(transformers_config(cfg))
    assert any(key.startswith("decoder.") for key in full.state_dict())
    full.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    model = load_model(lambda: UMT5Encoder(**cfg), [file], dtype=torch.float32, key_map=transformers_to_official)
    assert torch.equal(model.token_embedding.weight, full.shared.weight.detach())


def test_official_layout_loads_in_bfloat16_close_to_float32(tmp_path: Path):
    cfg = CONFIGS[0]
    reference = random_reference(cfg, seed=0)
    official = {transformers_to_official(k): v for k, v in reference.state_dict().items()}
    # A bf16 file (as released), so both runs use the same weights and only the arithmetic differs.
    bf16_state = {k: v.to(torch.bfloat16) for k, v in official.items() if k is not None}
    file = save_state_dict(bf16_state, tmp_path / "umt5.safetensors")
    exact = load_model(lambda: UMT5Encoder(**cfg), [file], dtype=torch.float32)
    half = load_model(lambda: UMT5Encoder(**cfg), [file], dtype=torch.bfloat16)
    ids, mask = padded_batch(cfg["vocab"], seed=0)

    with torch.no_grad():
        want, got = exact(ids, mask), half(ids, mask)

    assert half.blocks[0].attn.q.weight.dtype == torch.bfloat16
    assert half.blocks[0].pos_embedding.embedding.weight.dtype == torch.float32
    assert got.dtype == torch.bfloat16
    real = mask.bool()
    error = (got.float() - want)[real]
    assert error.norm() <= 3e-2 * want[real].norm()


def test_tiny_encoder_embeds_every_tiny_tokenizer_id(tmp_path: Path):
    tokenizer = T5Tokenizer(write_tiny_tokenizer(tmp_path), text_len=16)
    assert UMT5Encoder(**TINY_UMT5).token_embedding.num_embeddings == tokenizer.vocab_size


def test_xxl_config_has_the_shapes_of_the_released_checkpoint():
    with torch.device("meta"):
        model = UMT5Encoder(**UMT5_XXL)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert len(model.blocks) == 24
    assert shapes["token_embedding.weight"] == (256384, 4096)
    assert shapes["blocks.23.ffn.fc1.weight"] == (10240, 4096)
    assert shapes["blocks.23.pos_embedding.embedding.weight"] == (32, 64)
