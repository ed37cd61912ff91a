"""wan_engine.nn.clip: the Wan 2.1 I2V image encoder against transformers' CLIPVisionModel (the image
encoder of diffusers' Wan 2.1 I2V pipelines) with the same random weights, and its checkpoint names."""
from __future__ import annotations

import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from wan_engine.nn.clip import CLIP_MEAN, CLIP_STD, TINY_CLIP, ClipVisionEncoder, clip_pixels, wan_key_map


def transformers_model(seed: int) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=TINY_CLIP["dim"], intermediate_size=TINY_CLIP["dim"] * TINY_CLIP["mlp_ratio"],
                              num_hidden_layers=TINY_CLIP["num_layers"], num_attention_heads=TINY_CLIP["num_heads"],
                              image_size=TINY_CLIP["image_size"], patch_size=TINY_CLIP["patch_size"],
                              hidden_act="gelu", layer_norm_eps=TINY_CLIP["eps"])
    model = CLIPVisionModel(config).eval()
    with torch.no_grad():  # random norms and embeddings, so that a swapped or skipped one shows
        for name, parameter in model.named_parameters():
            if "norm" in name or "embedding" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.5 + (1.0 if name.endswith("norm1.weight") else 0.0))
    return model


def ours_from(reference: CLIPVisionModel) -> ClipVisionEncoder:
    """Our encoder holding the reference's weights (q, k, v fused as the Wan checkpoint stores them)."""
    state = {k.removeprefix("vision_model."): v for k, v in reference.state_dict().items()}
    ours = ClipVisionEncoder(**TINY_CLIP)
    mapped = {
        "patch_embedding.weight": state["embeddings.patch_embedding.weight"],
        "cls_embedding": state["embeddings.class_embedding"].view(1, 1, -1),
        "pos_embedding": state["embeddings.position_embedding.weight"][None],
        "pre_norm.weight": state["pre_layrnorm.weight"], "pre_norm.bias": state["pre_layrnorm.bias"],
    }
    for i in range(TINY_CLIP["num_layers"] - 1):
        layer = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            mapped[f"transformer.{i}.attn.to_qkv.{kind}"] = torch.cat(
                [state[f"{layer}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            mapped[f"transformer.{i}.attn.proj.{kind}"] = state[f"{layer}self_attn.out_proj.{kind}"]
            mapped[f"transformer.{i}.norm1.{kind}"] = state[f"{layer}layer_norm1.{kind}"]
            mapped[f"transformer.{i}.norm2.{kind}"] = state[f"{layer}layer_norm2.{kind}"]
            mapped[f"transformer.{i}.mlp.0.{kind}"] = state[f"{layer}mlp.fc1.{kind}"]
            mapped[f"transformer.{i}.mlp.2.{kind}"] = state[f"{layer}mlp.fc2.{kind}"]
    ours.load_state_dict(mapped, strict=True)
    return ours.eval()


def test_the_encoder_gives_the_penultimate_hidden_states_of_transformers_clip() -> None:
    reference = transformers_model(3)
    ours = ours_from(reference)
    image = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    pixels = clip_pixels(image, TINY_CLIP["image_size"])
    with torch.no_grad():
        expected = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        got = ours.encode(image)
    assert got.shape == (1, 1 + (28 // 14) ** 2, TINY_CLIP["dim"])
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()


def test_pixels_are_lanczos_resized_and_normalized_with_clips_statistics() -> None:
    white = np.full((30, 50, 3), 255, np.uint8)
    pixels = clip_pixels(white, 28)
    assert pixels.shape == (1, 3, 28, 28)
    expected = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(pixels[0, :, 5, 5], expected, atol=1e-6)


def test_the_wan_checkpoint_keeps_only_the_vision_tower_through_its_penultimate_block() -> None:
    rename = wan_key_map(32)
    assert rename("visual.transformer.30.attn.to_qkv.weight") == "transformer.30.attn.to_qkv.weight"
    assert rename("visual.cls_embedding") == "cls_embedding"
    for dropped in ("visual.transformer.31.mlp.0.weight", "visual.post_norm.weight", "visual.head",
                    "textual.encoder.layers.0.weight", "log_scale"):
        assert rename(dropped) is None


def test_a_transformers_clip_file_loads_as_pieces_of_the_fused_projection(tmp_path) -> None:
    """diffusers' Wan 2.1 I2V `image_encoder/` (CLIPVisionModel) and ComfyUI's clip_vision_h (with its
    projection) store q, k, v apart and the embeddings flat: loaded through the key map, the encoder
    gives transformers' own penultimate hidden states."""
    from safetensors.torch import save_file

    from wan_engine.checkpoints import NetworkFiles, verify_network_files
    from wan_engine.nn.clip import key_map
    from wan_engine.weights import load_model

    reference = transformers_model(11)
    # as transformers 4 wrote the published files (transformers 5 leaves out the vision_model. prefix)
    state = {f"vision_model.{k}": v.contiguous() for k, v in reference.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    state["visual_projection.weight"] = torch.randn(16, TINY_CLIP["dim"])  # ComfyUI's file carries the head
    path = tmp_path / "clip_vision_h.safetensors"
    save_file(state, str(path))
    build = lambda: ClipVisionEncoder(**TINY_CLIP)  # noqa: E731
    network = NetworkFiles("image encoder", build, [path], key_map(TINY_CLIP["num_layers"]))
    verify_network_files(network)
    ours = load_model(build, [path], dtype=torch.float32, key_map=network.key_map)
    image = np.random.default_rng(12).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = reference(pixel_values=clip_pixels(image, TINY_CLIP["image_size"]),
                             output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(ours.encode(image), expected, atol=1e-5, rtol=1e-5)


def test_a_transformers_clip_file_missing_a_piece_or_with_a_wrong_one_names_it(tmp_path) -> None:
    import pytest
    from safetensors.torch import save_file

    from wan_engine.checkpoints import NetworkFiles, verify_network_files
    from wan_engine.errors import LoadError
    from wan_engine.nn.clip import key_map
    from wan_engine.weights import load_model

    state = {k: v.contiguous() for k, v in transformers_model(1).state_dict().items()}
    build = lambda: ClipVisionEncoder(**TINY_CLIP)  # noqa: E731
    without_v = {k: v for k, v in state.items() if k != "encoder.layers.1.self_attn.v_proj.weight"}
    save_file(without_v, str(tmp_path / "a.safetensors"))
    network = NetworkFiles("image encoder", build, [tmp_path / "a.safetensors"], key_map(TINY_CLIP["num_layers"]))
    with pytest.raises(LoadError, match="lack key transformer.1.attn.to_qkv.weight"):
        verify_network_files(network)
    with pytest.raises(LoadError, match="1 missing: transformer.1.attn.to_qkv.weight"):
        load_model(build, network.files, dtype=torch.float32, key_map=network.key_map)
    wrong = {**state, "encoder.layers.0.self_attn.q_proj.weight": torch.zeros(8, TINY_CLIP["dim"])}
    save_file(wrong, str(tmp_path / "b.safetensors"))
    network = NetworkFiles("image encoder", build, [tmp_path / "b.safetensors"], key_map(TINY_CLIP["num_layers"]))
    with pytest.raises(LoadError, match=r"q_proj.weight has shape \[8, 32\], the network needs \[96, 32\] "
                                        r"\(piece 1 of 3\)"):
        verify_network_files(network)
