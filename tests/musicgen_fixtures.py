"""A tiny random-weight MusicGen built from transformers configs, with a T5 tokenizer trained here.

The same architecture as facebook/musicgen-small (T5 text encoder, 32 kHz EnCodec with 4 codebooks
at 50 frames/s, a decoder with cross-attention and one LM head per codebook) at a size that exports
and runs in seconds. ``stereo=True`` builds the stereo variant (8 codebooks, left/right interleaved).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "calm piano in C major at 80 BPM",
    "intense battle music with thumping drums and brass",
    "a gentle folk piece with flute and acoustic guitar",
    "dark ambient drones, slow and sinister",
    "upbeat electronic dance track with synth bass",
    "peaceful strings and harp, soft and warm",
    "fast heroic orchestral theme in D minor",
]


def train_t5_tokenizer(folder: Path, vocab_size: int = 120) -> None:
    """A SentencePiece-style Unigram tokenizer with T5's special tokens, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)  # fmt: skip
    fast.save_pretrained(folder)


def tiny_musicgen(
    folder: Path, *, stereo: bool = False, seed: int = 0, hidden: int = 32, layers: int = 2
) -> Path:
    """Save a random tiny MusicgenForConditionalGeneration (and its tokenizer) to ``folder``."""
    import torch
    from transformers import (
        EncodecConfig,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    folder.mkdir(parents=True, exist_ok=True)
    train_t5_tokenizer(folder)
    torch.manual_seed(seed)
    codebook = 64
    text = T5Config(vocab_size=120, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
    audio = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=codebook,
        codebook_dim=16,
        target_bandwidths=[1.2],
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        use_causal_conv=False,
        num_lstm_layers=2,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=codebook,
        max_position_embeddings=1024,
        num_hidden_layers=layers,
        ffn_dim=2 * hidden,
        num_attention_heads=2,
        hidden_size=hidden,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
        pad_token_id=codebook,
        bos_token_id=codebook,
        decoder_start_token_id=codebook,
    )
    config = MusicgenConfig(
        text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict()
    )
    model = MusicgenForConditionalGeneration(config).eval()
    # Random weights at the default scale give flat logits, uniform attention and a faint text
    # condition: scale the heads up so greedy choices are well separated, and both attentions so
    # the past (the KV cache) and the text really change what comes next.
    with torch.no_grad():
        for head in model.decoder.lm_heads:
            head.weight.mul_(8.0)
        for layer in model.decoder.model.decoder.layers:
            for attn in (layer.self_attn, layer.encoder_attn):
                attn.q_proj.weight.mul_(6.0)
                attn.k_proj.weight.mul_(6.0)
                attn.v_proj.weight.mul_(20.0)
                attn.out_proj.weight.mul_(10.0)
        # EnCodec's codebooks start at zero (they are learned by k-means) and at random the biases
        # drown what the signal says in a constant offset: give the codebooks random entries, drop
        # the biases and scale the output layers, so different codes decode to different audio at a
        # normal level, and different audio encodes to different codes.
        codec = model.audio_encoder
        for quantizer in codec.quantizer.layers:
            quantizer.codebook.embed.normal_(0.0, 1.0)
        for part, gain in ((codec.decoder, 60.0), (codec.encoder, 1000.0)):
            for name, param in part.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
            last = dict(part.layers[-1].conv.named_parameters())
            last.get("parametrizations.weight.original0", last.get("weight")).mul_(gain)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=codebook, pad_token_id=codebook, bos_token_id=codebook, do_sample=True,
        top_k=250, guidance_scale=3.0, max_length=1500,
    )  # fmt: skip
    model.save_pretrained(folder)
    return folder
