"""Real architectures at random weights, for benchmarks on machines without the weights.

No network and no checkpoint are needed: the configs below are the published shapes.

* :func:`musicgen_small`: facebook/musicgen-small (T5-base text encoder; a decoder of 24 layers,
  hidden 1024, 16 heads, FFN 4096, 4 codebooks of 2048; the 32 kHz EnCodec at 50 frames/s).
* :func:`llama2_7b_config`: LLaMA-2-7B (32 layers, hidden 4096, 32 heads, FFN 11008, vocab 32000).

Random weights give music-shaped compute (the same operators and shapes), not music.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def musicgen_small(folder: Path, *, seed: int = 0) -> Path:
    """Save a random-weight MusicGen-small (and a small trained T5 tokenizer) to ``folder``."""
    import sys

    import torch
    from transformers import (
        EncodecConfig,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    if (folder / "config.json").is_file():
        return folder
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from musicgen_fixtures import train_t5_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    train_t5_tokenizer(folder, vocab_size=400)
    torch.manual_seed(seed)
    text = T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    audio = EncodecConfig(
        sampling_rate=32000, audio_channels=1, hidden_size=128, num_filters=64, num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=128, target_bandwidths=[2.2],
        normalize=False, chunk_length_s=None, overlap=None, use_causal_conv=False, num_lstm_layers=2,
    )  # fmt: skip
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, max_position_embeddings=2048, num_hidden_layers=24, ffn_dim=4096,
        num_attention_heads=16, hidden_size=1024, num_codebooks=4, audio_channels=1,
        pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
    )  # fmt: skip
    config = MusicgenConfig(
        text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict()
    )
    model = MusicgenForConditionalGeneration(config).eval()
    with torch.no_grad():
        for quantizer in model.audio_encoder.quantizer.layers:
            quantizer.codebook.embed.normal_(0.0, 1.0)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=2048, pad_token_id=2048, bos_token_id=2048, do_sample=True, top_k=250,
        guidance_scale=3.0, max_length=1500,
    )  # fmt: skip
    model.save_pretrained(folder)
    return folder


def llama2_7b_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )  # fmt: skip
