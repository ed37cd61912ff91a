"""The reference implementations' configurations of our network configs, for tests that build those
references (test_t5) or read their key names (layouts)."""
from __future__ import annotations

from transformers import UMT5Config

from wan_engine.nn.t5 import RELATIVE_MAX_DISTANCE


def transformers_config(cfg: dict) -> UMT5Config:
    return UMT5Config(
        vocab_size=cfg["vocab"],
        d_model=cfg["dim"],
        d_kv=cfg["dim_attn"] // cfg["num_heads"],
        d_ff=cfg["dim_ffn"],
        num_heads=cfg["num_heads"],
        num_layers=cfg["num_layers"],
        relative_attention_num_buckets=cfg["num_buckets"],
        relative_attention_max_distance=RELATIVE_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
