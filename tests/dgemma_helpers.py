"""A tiny random DiffusionGemma checkpoint written by transformers' ``save_pretrained``, with the
lab's word-level tokenizer (for tests/test_diffusion_gemma*.py)."""

from __future__ import annotations

from pathlib import Path

import torch

GEN = {"max_new_tokens": 16, "max_denoising_steps": 6, "entropy_bound": 0.5, "t_min": 0.4, "t_max": 0.8,
       "stability_threshold": 1, "confidence_threshold": 0.005}


def make_tiny_dgemma(path: Path, canvas_length: int = 8, seed: int = 0, std: float = 0.0, **gen) -> Path:
    """Save a random DiffusionGemma (2 layers, MoE, tiny vision tower) and its generation config;
    ``std`` > 0: weights drawn with that scale (peaked logits)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaGenerationConfig
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    from fewstep.tasks import arith
    from fewstep.training import tokenizers

    tok = tokenizers.word_level(arith.vocabulary())
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                num_experts=4, top_k_experts=2, moe_intermediate_size=32)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=8, position_embedding_size=64, patch_size=4)
    cfg = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    if std > 0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0, std)
    g = {**GEN, **gen}
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=g["max_new_tokens"], max_denoising_steps=g["max_denoising_steps"],
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(g["entropy_bound"])), t_min=g["t_min"],
        t_max=g["t_max"], stability_threshold=g["stability_threshold"],
        confidence_threshold=g["confidence_threshold"], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
