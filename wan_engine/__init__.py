"""The resident Wan engine: networks, samplers, LoRA, model registry, pipeline."""
