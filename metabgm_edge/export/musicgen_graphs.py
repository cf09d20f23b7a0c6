"""MusicGen's graphs for ONNX export: small torch modules over a transformers model's own weights.

Each module computes exactly what ``MusicgenForConditionalGeneration.generate`` computes for its
part, with plain tensors in and out, so the runtime (numpy + onnxruntime) can drive generation
step by step:

- :class:`TextEncoder`: T5 token ids and mask -> last hidden state.
- :class:`CrossKV`: encoder hidden states and mask -> every decoder layer's cross-attention keys
  and values (the projection to the decoder's width and the mask are applied first, as
  transformers does). Computed once per segment instead of once per step.
- :class:`Decoder`: codes of the new positions (batch x codebooks rows), the self-attention cache
  of the positions before (any length), the cross keys and values -> the next codes' logits of the
  last position, and the cache grown by the new positions.
- :class:`StaticDecoder`: the same with a preallocated cache of a fixed length written in place at
  ``position`` (ScatterElements): every shape is fixed, which CUDA graphs and TensorRT's fixed
  profiles need.
- :class:`CodecDecode` / :class:`CodecEncode`: EnCodec's decoder (codes -> waveform) and encoder
  (waveform -> codes, for continuing from audio; optimum does not export it).

The decoder's attention is written out (softmax of scaled dot products with an additive mask),
not left to an attention kernel, so the exported graph is the same on every provider.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NEG: float = -3.4028234663852886e38
"""The additive mask value transformers uses (the float32 minimum), not -inf: a row that masks
everything (the unconditional half of guidance) then averages zeros instead of making NaN."""


def parts(model: Any) -> tuple[Any, Any, Any]:
    """(MusicgenDecoder, lm_heads, enc_to_dec_proj or None) of a MusicgenForConditionalGeneration."""
    causal = model.decoder
    inner = causal.model.decoder
    proj = getattr(model, "enc_to_dec_proj", None)
    return inner, causal.lm_heads, proj


class TextEncoder(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class CrossKV(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        inner, _, proj = parts(model)
        self.layers = inner.layers
        self.proj = proj
        self.heads = inner.config.num_attention_heads
        self.head_dim = inner.config.hidden_size // self.heads

    def forward(self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor) -> tuple:
        h = encoder_hidden_states
        if self.proj is not None:
            h = self.proj(h)
        h = h * encoder_attention_mask[..., None].to(h.dtype)
        b, t, _ = h.shape
        out = []
        for layer in self.layers:
            attn = layer.encoder_attn
            k = attn.k_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            out += [k, v]
        return tuple(out)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    weights = torch.matmul(q, k.transpose(2, 3)) * scale + mask
    return torch.matmul(torch.softmax(weights, dim=-1), v)


class _DecoderBase(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        inner, heads, _ = parts(model)
        cfg = inner.config
        self.inner = inner
        self.lm_heads = heads
        self.codebooks = cfg.num_codebooks
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.embed_scale = inner.embed_scale
        positions = inner.embed_positions.weights.detach().clone()
        self.register_buffer("positions", positions, persistent=False)

    def _embed(self, input_ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[-1]
        ids = input_ids.reshape(-1, self.codebooks, s)
        h = self.inner.embed_tokens[0](ids[:, 0])
        for k in range(1, self.codebooks):
            h = h + self.inner.embed_tokens[k](ids[:, k])
        h = h * self.embed_scale
        index = torch.arange(s, dtype=torch.int64) + start
        return h + self.positions.index_select(0, index)[None]

    def _cross_mask(self, encoder_attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        m = encoder_attention_mask[:, None, None, :].to(dtype)
        return (1.0 - m) * NEG

    def _layer_tail(
        self, layer: Any, h: torch.Tensor, ck: torch.Tensor, cv: torch.Tensor, cmask: torch.Tensor
    ) -> torch.Tensor:
        b, s, d = h.shape
        x = layer.encoder_attn_layer_norm(h)
        q = layer.encoder_attn.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        a = _attend(q, ck, cv, cmask, self.scale).transpose(1, 2).reshape(b, s, d)
        h = h + layer.encoder_attn.out_proj(a)
        x = layer.final_layer_norm(h)
        return h + layer.fc2(layer.activation_fn(layer.fc1(x)))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        last = self.inner.layer_norm(h[:, -1:])
        return torch.stack([head(last[:, 0]) for head in self.lm_heads], dim=1)  # (B, K, V)

    def _self_qkv(self, layer: Any, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _ = h.shape
        x = layer.self_attn_layer_norm(h)
        attn = layer.self_attn

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

        return split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))


class Decoder(_DecoderBase):
    """Inputs: input_ids, encoder_attention_mask, past_key.{i}, past_value.{i}, cross_key.{i},
    cross_value.{i}. Outputs: logits (B, K, V), present_key.{i}, present_value.{i}."""

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *caches: torch.Tensor):
        n = len(self.inner.layers)
        past, cross = caches[: 2 * n], caches[2 * n :]
        # The past length as a tensor op (a Python int from .shape would be frozen by the tracer).
        start = torch.ones_like(past[0][0, 0, :, 0], dtype=torch.int64).sum()
        h = self._embed(input_ids, start)
        b, s, d = h.shape
        # causal: new position i sees every past position and the new ones up to itself
        col = torch.arange(past[0].shape[2] + s, dtype=torch.int64)[None, :]
        row = torch.arange(s, dtype=torch.int64)[:, None] + start
        smask = torch.where(col <= row, 0.0, NEG).to(h.dtype)[None, None]
        cmask = self._cross_mask(encoder_attention_mask, h.dtype)
        present = []
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._self_qkv(layer, h)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            present += [k, v]
            a = _attend(q, k, v, smask, self.scale).transpose(1, 2).reshape(b, s, d)
            h = h + layer.self_attn.out_proj(a)
            h = self._layer_tail(layer, h, cross[2 * i], cross[2 * i + 1], cmask)
        return (self._logits(h), *present)


class StaticDecoder(_DecoderBase):
    """Inputs: input_ids, position (int64 [1]: where the new positions go), encoder_attention_mask,
    cache_key.{i}, cache_value.{i} (fixed length L), cross_key.{i}, cross_value.{i}. Outputs:
    logits, cache_key_out.{i}, cache_value_out.{i} (the caches with the new positions written)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        *caches: torch.Tensor,
    ):
        n = len(self.inner.layers)
        cache, cross = caches[: 2 * n], caches[2 * n :]
        start = position.reshape(())
        h = self._embed(input_ids, start)
        b, s, d = h.shape
        length = cache[0].shape[2]
        col = torch.arange(length, dtype=torch.int64)[None, :]
        row = torch.arange(s, dtype=torch.int64)[:, None] + start
        smask = torch.where(col <= row, 0.0, NEG).to(h.dtype)[None, None]
        cmask = self._cross_mask(encoder_attention_mask, h.dtype)
        where = (torch.arange(s, dtype=torch.int64) + start)[None, None, :, None].expand(
            b, self.heads, s, self.head_dim
        )
        updated = []
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._self_qkv(layer, h)
            k_all = torch.scatter(cache[2 * i], 2, where, k)
            v_all = torch.scatter(cache[2 * i + 1], 2, where, v)
            updated += [k_all, v_all]
            a = _attend(q, k_all, v_all, smask, self.scale).transpose(1, 2).reshape(b, s, d)
            h = h + layer.self_attn.out_proj(a)
            h = self._layer_tail(layer, h, cross[2 * i], cross[2 * i + 1], cmask)
        return (self._logits(h), *updated)


class CodecDecode(nn.Module):
    """audio_codes (B, K, T) of one channel -> audio_values (B, 1, T * hop)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.codec = model.audio_encoder

    def forward(self, audio_codes: torch.Tensor) -> torch.Tensor:
        embeddings = self.codec.quantizer.decode(audio_codes.transpose(0, 1))
        return self.codec.decoder(embeddings)


class CodecEncode(nn.Module):
    """input_values (B, 1, samples) of one channel -> audio_codes (B, K, ceil(samples / hop))."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.codec = model.audio_encoder
        self.bandwidth = model.audio_encoder.config.target_bandwidths[0]

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.codec.encoder(input_values)
        return self.codec.quantizer.encode(embeddings, self.bandwidth).transpose(0, 1)
