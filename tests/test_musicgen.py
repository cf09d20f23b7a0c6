"""MusicGen on onnxruntime: export, codes identical to transformers' own generate, continuation,
streaming, and bundles refused when broken.

A tiny random-weight MusicGen (tests/musicgen_fixtures.py: T5, 32 kHz EnCodec, a decoder with
cross-attention, 4 codebooks; and a stereo variant of another shape) is exported once per session
and compared with ``MusicgenForConditionalGeneration.generate`` on the same weights.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from audio_helpers import render
from click.testing import CliRunner

from metabgm_edge import bundle
from metabgm_edge.audio import AudioRequest, anchor_from_metadata, anchor_to_metadata, open_audio_backend
from metabgm_edge.audio.musicgen import MusicGen, MusicGenAnchor
from metabgm_edge.audio.musicgen.codec import StreamingDecoder
from metabgm_edge.audio.musicgen.delay import DelayPattern
from metabgm_edge.audio.musicgen.sampling import SamplingConfig
from metabgm_edge.errors import BundleError
from metabgm_edge.playback.mixer import Mixer
from metabgm_edge.playback.wav import read_wav

pytestmark = pytest.mark.export
SR = 32000
GREEDY = SamplingConfig(do_sample=False, guidance_scale=3.0)
_cache: dict[str, Any] = {}


def once(key: str, make: Any) -> Any:
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from musicgen_fixtures import tiny_musicgen

    return once("mono", lambda: tiny_musicgen(tmp_path_factory.mktemp("mg") / "tiny"))


@pytest.fixture(scope="session")
def stereo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from musicgen_fixtures import tiny_musicgen

    return once(
        "stereo",
        lambda: tiny_musicgen(
            tmp_path_factory.mktemp("mg") / "stereo", stereo=True, hidden=48, layers=3, seed=3
        ),
    )


def _export(model_dir: Path, out: Path, quant: str = "fp32") -> Path:
    from metabgm_edge.export.musicgen import export_musicgen
    from metabgm_edge.export.recipe import MusicGenOptions, Recipe

    recipe = Recipe(
        kind="musicgen",
        model=str(model_dir),
        quant=quant,
        out=str(out),
        musicgen=MusicGenOptions(static_cache=True, static_cache_length=320),
    )
    return export_musicgen(recipe, progress=lambda _line: None)


@pytest.fixture(scope="session")
def mono_bundle(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once("mono-fp32", lambda: _export(tiny_dir, tmp_path_factory.mktemp("engines") / "tiny-fp32"))


@pytest.fixture(scope="session")
def stereo_bundle(stereo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once(
        "stereo-fp32", lambda: _export(stereo_dir, tmp_path_factory.mktemp("engines") / "stereo-fp32")
    )


def hf(model_dir: Path) -> tuple[Any, Any]:
    def load() -> tuple[Any, Any]:
        from transformers import AutoTokenizer, MusicgenForConditionalGeneration

        return MusicgenForConditionalGeneration.from_pretrained(
            model_dir
        ).eval(), AutoTokenizer.from_pretrained(model_dir)

    return once(f"hf:{model_dir}", load)


def hf_generate(model_dir: Path, text: str, new_tokens: int, prompt: np.ndarray | None = None):
    """transformers' generate of a mono model (greedy, guidance 3): the codes it decodes, the waveform."""
    import torch

    model, tok = hf(model_dir)
    captured: dict[str, Any] = {}
    decode = model.audio_encoder.decode

    def spy(audio_codes: Any, *args: Any, **kwargs: Any) -> Any:
        captured["codes"] = audio_codes.clone()
        return decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    try:
        kwargs: dict[str, Any] = dict(tok([text], return_tensors="pt"))
        if prompt is not None:
            kwargs["input_values"] = torch.from_numpy(prompt.T[None].copy())  # (1, channels, samples)
        with torch.no_grad():
            wave = model.generate(**kwargs, do_sample=False, guidance_scale=3.0, max_new_tokens=new_tokens)
    finally:
        model.audio_encoder.decode = decode
    return captured["codes"][0, 0].numpy(), wave[0].numpy().T


def runtime_codes(bundle_dir: Path, text: str, frames: int, prompt: np.ndarray | None = None, **load: Any):
    backend = MusicGen.load(bundle_dir, sampling=GREEDY, **load)
    model = backend.model
    prompt_codes = model.encode(prompt) if prompt is not None else None
    cond = model.condition(text)
    new = np.stack(list(model.frames(cond, frames, prompt=prompt_codes, sampling=GREEDY)), axis=1)
    return (new if prompt_codes is None else np.concatenate([prompt_codes, new], axis=1)), model


# -- parity with transformers ---------------------------------------------------------------------


def test_greedy_codes_and_waveform_match_transformers_generate(tiny_dir: Path, mono_bundle: Path) -> None:
    ref_codes, ref_wave = hf_generate(tiny_dir, "calm piano in C major at 80 BPM", new_tokens=60)
    assert ref_codes.shape == (4, 57)  # 60 steps, less the 3 steps of codebook delay
    codes, model = runtime_codes(mono_bundle, "calm piano in C major at 80 BPM", ref_codes.shape[1])
    np.testing.assert_array_equal(codes, ref_codes)
    wave = model.decode(codes)
    assert wave.shape == ref_wave.shape
    np.testing.assert_allclose(wave, ref_wave, atol=1e-4)
    # Another description gives other codes: the text really conditions the decoder.
    other, _ = runtime_codes(mono_bundle, "intense battle music with thumping drums and brass", 57)
    assert (other != codes).mean() > 0.2


def test_audio_prompted_codes_match_transformers_generate(tiny_dir: Path, mono_bundle: Path) -> None:
    rng = np.random.default_rng(4)
    prompt = (0.2 * rng.standard_normal((SR, 1))).astype(np.float32)  # 1 s: 50 frames
    ref_codes, ref_wave = hf_generate(tiny_dir, "dark ambient drones, slow", new_tokens=60, prompt=prompt)
    assert ref_codes.shape == (4, 50 + 57)  # transformers' output begins with the prompt's codes
    codes, model = runtime_codes(mono_bundle, "dark ambient drones, slow", 57, prompt=prompt)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(model.decode(codes), ref_wave, atol=1e-4)


def test_the_fixed_length_cache_gives_the_same_codes(mono_bundle: Path) -> None:
    rng = np.random.default_rng(5)
    prompt = (0.2 * rng.standard_normal((SR // 2, 1))).astype(np.float32)
    growing, _ = runtime_codes(mono_bundle, "upbeat folk with flute", 60, prompt=prompt, cache="dynamic")
    fixed, model = runtime_codes(mono_bundle, "upbeat folk with flute", 60, prompt=prompt, cache="static")
    assert model.cache_mode == "static"
    np.testing.assert_array_equal(fixed, growing)


def test_stereo_model_of_another_shape_matches_transformers(stereo_dir: Path, stereo_bundle: Path) -> None:
    """8 codebooks (left and right interleaved, delayed in pairs), 3 layers of width 48."""
    import torch

    model, tok = hf(stereo_dir)
    calls: list[np.ndarray] = []
    decode = model.audio_encoder.decode

    def spy(audio_codes: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(audio_codes[0, 0].numpy().copy())
        return decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    try:
        with torch.no_grad():
            ref_wave = model.generate(
                **tok(["peaceful strings and harp"], return_tensors="pt"),
                do_sample=False,
                guidance_scale=3.0,
                max_new_tokens=55,
            )[0].numpy()
    finally:
        model.audio_encoder.decode = decode
    left, right = calls
    ref_codes = np.empty((8, left.shape[1]), dtype=np.int64)
    ref_codes[0::2], ref_codes[1::2] = left, right
    codes, rt = runtime_codes(stereo_bundle, "peaceful strings and harp", left.shape[1])
    manifest = bundle.read_manifest(stereo_bundle)
    assert manifest.musicgen is not None and manifest.musicgen.audio_channels == 2
    np.testing.assert_array_equal(codes, ref_codes)
    wave = rt.decode(codes)
    assert wave.shape == (ref_wave.shape[1], 2)
    np.testing.assert_allclose(wave, ref_wave.T, atol=1e-4)


def test_an_fp16_gpu_bundle_runs_here_on_the_cpu_fallback(tiny_dir: Path, mono_bundle: Path, tmp_path: Path):
    """fp16 everywhere the GPU runs it (caches, cross keys/values, logits), checked on the CPU."""
    from metabgm_edge.export.musicgen import export_musicgen
    from metabgm_edge.export.recipe import Recipe

    out = export_musicgen(
        Recipe(kind="musicgen", model=str(tiny_dir), quant="fp16", target="cuda", out=str(tmp_path / "fp16")),
        progress=lambda _line: None,
    )
    manifest = bundle.read_manifest(out)
    assert manifest.musicgen.kv_dtype == "float16" and "decoder_static" in manifest.graphs
    reference, _ = runtime_codes(mono_bundle, "calm piano", 40)
    for cache in ("dynamic", "static"):
        codes, model = runtime_codes(out, "calm piano", 40, cache=cache)
        assert model.provider == "cpu"
        assert (codes == reference).mean() > 0.9  # fp16 rounding may flip a near tie


@pytest.mark.parametrize(("channels", "codebooks"), [(1, 4), (2, 8)])
@pytest.mark.parametrize("prompt_frames", [0, 1, 7])
def test_delay_pattern_is_transformers_delay_pattern(
    channels: int, codebooks: int, prompt_frames: int
) -> None:
    import torch
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    pad = 64
    decoder = MusicgenForCausalLM(
        MusicgenDecoderConfig(
            vocab_size=pad, num_codebooks=codebooks, audio_channels=channels, hidden_size=8,
            num_hidden_layers=1, num_attention_heads=1, ffn_dim=8, pad_token_id=pad,
            decoder_start_token_id=pad,
        )
    )  # fmt: skip
    rng = np.random.default_rng(prompt_frames)
    prompt = rng.integers(0, pad, (codebooks, prompt_frames))
    frames = 12
    pattern = DelayPattern(codebooks, channels, pad, prompt if prompt_frames else None, frames)
    start = np.full((codebooks, 1), pad)
    ids = torch.from_numpy(np.concatenate([start, prompt], axis=1))
    _, mask = decoder.build_delay_pattern_mask(ids, pad_token_id=pad, max_length=pattern.length)
    mask = mask.numpy()
    assert mask.shape == (codebooks, pattern.length)
    ours = np.stack([pattern.forced(c) for c in range(pattern.length)], axis=1)
    np.testing.assert_array_equal(ours, mask)


# -- sampling ------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_top_k_one_is_greedy(mono_bundle: Path) -> None:
    backend = MusicGen.load(mono_bundle)
    model = backend.model
    cond = model.condition("calm piano")
    sample = SamplingConfig(do_sample=True, top_k=250, guidance_scale=3.0)

    def run(config: SamplingConfig, seed: int) -> np.ndarray:
        return np.stack(list(model.frames(cond, 40, sampling=config, seed=seed)), axis=1)

    a, b, c = run(sample, 1), run(sample, 1), run(sample, 2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.2
    np.testing.assert_array_equal(run(SamplingConfig(top_k=1, guidance_scale=3.0), 9), run(GREEDY, 0))
    assert backend.sampling.top_k == 250 and backend.sampling.guidance_scale == 3.0  # the bundle's defaults


# -- streaming and continuation -------------------------------------------------------------------


def test_a_streamed_segment_equals_the_segment_decoded_whole(mono_bundle: Path) -> None:
    codes, model = runtime_codes(mono_bundle, "fast heroic orchestral theme", 120)
    prompt, new = codes[:, :30], codes[:, 30:]
    stream = StreamingDecoder(model.decode, 640, start=prompt, num_codebooks=4, first=10, chunk=25)
    pieces = [a for a in (stream.push(f) for f in new.T) if a is not None]
    assert len(pieces) >= 3  # audio came out while frames were still arriving
    pieces.append(stream.finish())
    streamed = np.concatenate(pieces)
    whole = model.decode(codes)[30 * 640 :]
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-3 * float(np.abs(whole).max()))


def test_stream_yields_early_chunks_and_the_exact_length(mono_bundle: Path) -> None:
    backend = MusicGen.load(mono_bundle)
    chunks = list(backend.stream(AudioRequest(description="calm piano", seconds=3.0, tail=0.5, seed=3)))
    assert len(chunks) >= 3 and chunks[-1].last and not any(c.last for c in chunks[:-1])
    assert chunks[0].audio.shape[0] <= round(0.5 * SR)  # the first chunk is small: music starts early
    audio = np.concatenate([c.audio for c in chunks])
    assert audio.shape == (round(3.5 * SR), 2) and audio.dtype == np.float32 and np.isfinite(audio).all()
    anchor = chunks[-1].anchor
    assert isinstance(anchor, MusicGenAnchor) and anchor.array().shape == (4, 100)  # 2 s of codes
    assert backend.last.first_audio_s < backend.last.total_s


def _envelope_jumps(x: np.ndarray, window: int = 160) -> np.ndarray:
    """Ratios of the RMS of consecutive 5 ms windows (>= 1): a gap, a dip or a bump shows as a spike."""
    n = x.shape[0] // window
    rms = np.sqrt((x[: n * window].reshape(n, window, -1) ** 2).mean(axis=(1, 2))) + 1e-6
    return np.maximum(rms[1:] / rms[:-1], rms[:-1] / rms[1:])


def test_three_continued_segments_join_without_a_click(mono_bundle: Path) -> None:
    """Each segment continues the one before from its last 2 s of codes; those codes end where the
    previous segment's body ends (the next head starts where the previous tail starts, so the
    crossfade overlaps the same moment), and the mixed stream has no gap or level step at the joins.
    (Random weights make noise-like audio, where a sample-step click detector sees nothing: the
    envelope is what can be checked.)"""
    backend = MusicGen.load(mono_bundle)
    model = backend.model
    mixer = Mixer(SR, 2, crossfade_s=0.5)
    tail = round(0.5 * SR)
    anchor = None
    previous = None
    for i, text in enumerate(["calm piano", "calm piano with strings", "dark ambient drones"]):
        audio, next_anchor = render(backend, text, 2.0, anchor, tail=0.5, seed=i)
        assert audio.shape == (round(2.5 * SR), 2)
        if anchor is not None:
            assert backend.last.prompt_from == "anchor" and backend.last.prompt_frames == 100
            prompt = anchor.array()
            # The prompt's own audio ends where the previous segment's body ends (2 s in); only its
            # last frames differ (decoded alone, they do not see the frames that followed them).
            prompt_audio = model.decode(prompt)
            edge = 4 * model.section.codec_hop
            ends = prompt_audio[-SR // 2 : -edge, 0], previous[2 * SR - SR // 2 : 2 * SR - edge, 0]
            np.testing.assert_allclose(*ends, atol=2e-3 * float(np.abs(previous).max()))
            # (and test_a_streamed_segment_equals_the_segment_decoded_whole: the segment is decoded as the
            # continuation of that prompt audio, in one piece with it)
        mixer.append(audio, tail)
        previous, anchor = audio, next_anchor
    out = mixer.read(round(6.0 * SR))
    jumps = _envelope_jumps(out)
    window = 160
    joins = (2 * SR - tail, 2 * SR, 4 * SR - tail, 4 * SR)
    at_joins = [jumps[max(0, j // window - 4) : j // window + 4].max() for j in joins]
    elsewhere = np.percentile(jumps[SR // window : -SR // window], 99.5)
    assert max(at_joins) < max(2.0, 1.5 * elsewhere), (at_joins, elsewhere)
    gap = np.concatenate([out[: 2 * SR], np.zeros((640, 2), np.float32), out[2 * SR :]])
    assert _envelope_jumps(gap)[2 * SR // window - 4 : 2 * SR // window + 8].max() > max(2.0, 1.5 * elsewhere)


def test_after_another_backend_the_context_audio_is_encoded(mono_bundle: Path) -> None:
    synth = open_audio_backend("synth")
    before, synth_anchor = render(synth, "calm piano in C major", 3.0, tail=0.0)
    backend = MusicGen.load(mono_bundle, sampling=GREEDY)
    render(backend, "calm piano", 1.0, synth_anchor, context=before)
    assert backend.last.prompt_from == "audio" and backend.last.prompt_frames == 100
    render(backend, "calm piano", 1.0, None)
    assert backend.last.prompt_from == "none"


def test_audio_is_encoded_up_to_its_end(mono_bundle: Path) -> None:
    """Codes of a recording end where it ends: extra samples at the start are dropped, not the end."""
    model = MusicGen.load(mono_bundle).model
    rng = np.random.default_rng(8)
    audio = (0.2 * rng.standard_normal((40 * 640 + 123, 2))).astype(np.float32)
    codes = model.encode(audio)
    assert codes.shape == (4, 40)
    np.testing.assert_array_equal(codes, model.encode(audio[123:]))
    assert (codes != model.encode(audio[:-123])).any()


def test_the_anchor_round_trips_and_bad_ones_are_refused(mono_bundle: Path) -> None:
    backend = MusicGen.load(mono_bundle)
    _, anchor = render(backend, "calm piano", 1.0, tail=0.5)
    assert anchor_from_metadata(backend, anchor_to_metadata(anchor)) == anchor
    assert "codes" in anchor.summary()
    with pytest.raises(ValueError, match="MusicGen anchor"):
        backend.anchor_from_bytes(b"\x00not json")
    bad = msgspec.structs.replace(anchor, codes=[[999] * 3] * 4)
    with pytest.raises(ValueError, match="outside the codebook"):
        backend.anchor_from_bytes(bad.to_bytes())
    # A synthesizer anchor stored in a WAV is not this backend's: it continues from the audio.
    synth = open_audio_backend("synth")
    _, synth_anchor = render(synth, "calm", 1.0)
    assert anchor_from_metadata(backend, anchor_to_metadata(synth_anchor)) is None


# -- bundles that are wrong -------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite(folder: Path, **changes: Any) -> None:
    manifest = bundle.read_manifest(folder)
    bundle.write_manifest(folder, msgspec.structs.replace(manifest, **changes))


def test_corrupt_and_mismatched_bundles_are_refused_naming_the_file(
    mono_bundle: Path, tmp_path: Path
) -> None:
    flipped = _copy(mono_bundle, tmp_path / "flipped")
    data = flipped / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"model\.onnx\.data is corrupt"):
        open_audio_backend(str(flipped))

    deeper = _copy(mono_bundle, tmp_path / "deeper")
    section = bundle.read_manifest(deeper).musicgen
    _rewrite(deeper, musicgen=msgspec.structs.replace(section, num_layers=section.num_layers + 1))
    with pytest.raises(BundleError, match=r"cross_kv\.onnx lacks .*re-export"):
        MusicGen.load(deeper)

    missing = _copy(mono_bundle, tmp_path / "missing")
    graphs = dict(bundle.read_manifest(missing).graphs)
    del graphs["codec_encode"]
    (missing / "codec_encode.onnx").unlink()
    (missing / "codec_encode.onnx.data").unlink(missing_ok=True)
    _rewrite(missing, graphs=graphs)
    with pytest.raises(BundleError, match="lacks the graphs"):
        MusicGen.load(missing)

    garbage = _copy(mono_bundle, tmp_path / "garbage")
    (garbage / "text_encoder.onnx").write_bytes(b"not an onnx model")
    _rewrite(garbage)  # the checksums now match the garbage: onnxruntime itself must refuse it
    with pytest.raises(BundleError, match=r"text_encoder\.onnx cannot be loaded"):
        MusicGen.load(garbage)


def test_an_llm_bundle_is_not_an_audio_backend(mono_bundle: Path, tmp_path: Path) -> None:
    other = _copy(mono_bundle, tmp_path / "wrong-kind")
    text = (other / "manifest.json").read_text().replace('"kind":"musicgen"', '"kind":"llm"')
    (other / "manifest.json").write_text(text.replace('"kind": "musicgen"', '"kind": "llm"'))
    with pytest.raises(BundleError, match=r"manifest\.json"):
        open_audio_backend(str(other))


def test_the_runtime_imports_neither_torch_nor_transformers(mono_bundle: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from metabgm_edge.audio import AudioRequest, open_audio_backend, render
        backend = open_audio_backend({str(mono_bundle)!r})
        audio, anchor = render(backend, AudioRequest(description="calm", seconds=0.5))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
        print(audio.shape, heavy)
        assert not heavy, heavy
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(16000, 2) []" in done.stdout


# -- export and the command line ------------------------------------------------------------------------


def test_export_refuses_what_it_cannot_make(tiny_dir: Path, tmp_path: Path) -> None:
    from metabgm_edge.export.cli import export

    runner = CliRunner()
    not_musicgen = tmp_path / "llama"
    not_musicgen.mkdir()
    (not_musicgen / "config.json").write_text('{"model_type": "llama"}')
    result = runner.invoke(export, ["musicgen", "--model", str(not_musicgen), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "not 'musicgen'" in result.output
    base = ["musicgen", "--model", str(tiny_dir), "--quant", "fp16"]
    result = runner.invoke(export, [*base, "--target", "cpu", "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "not offered for --target cpu (musicgen" in result.output
    result = runner.invoke(export, [*base, "--target", "tensorrt", "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "TensorRT" in result.output
    assert not (tmp_path / "z").exists()


def test_cli_export_int8_then_render_and_continue(tiny_dir: Path, tmp_path: Path) -> None:
    from metabgm_edge.cli import main

    runner = CliRunner()
    out = tmp_path / "engines" / "tiny-int8"
    result = runner.invoke(main, ["export", "musicgen", "--model", str(tiny_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for step in range(1, 7):
        assert f"[{step}/6]" in result.output
    manifest = bundle.open_bundle(out, "musicgen")
    assert (manifest.quantization, manifest.target) == ("int8", "cpu")
    assert set(manifest.graphs) == {"text_encoder", "cross_kv", "decoder", "codec_decode", "codec_encode"}
    first = tmp_path / "first.wav"
    result = runner.invoke(
        main, ["render", "calm piano", "--audio", str(out), "--seconds", "2", "--out", str(first)]
    )
    assert result.exit_code == 0, result.output
    audio, info = read_wav(first)
    assert audio.shape == (2 * SR, 2) and np.abs(audio).max() > 1e-4 and info.metadata
    second = tmp_path / "second.wav"
    args = ["render", "calm piano and strings", "--audio", str(out), "--seconds", "1"]
    result = runner.invoke(main, [*args, "--continue-from", str(first), "--out", str(second)])
    assert result.exit_code == 0, result.output
    # A recording of the synthesizer (what play --out writes with the defaults) continues from its audio.
    synth_wav = tmp_path / "synth.wav"
    assert (
        runner.invoke(main, ["render", "calm piano", "--seconds", "2", "--out", str(synth_wav)]).exit_code
        == 0
    )
    third = tmp_path / "third.wav"
    result = runner.invoke(main, ["render", "calm piano", "--audio", str(out), "--seconds", "1",
                                  "--continue-from", str(synth_wav), "--out", str(third)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_wav(third)[0].shape == (SR, 2)


def test_play_fast_on_a_musicgen_bundle(mono_bundle: Path, tmp_path: Path) -> None:
    from metabgm_edge.cli import main

    wav, log = tmp_path / "play.wav", tmp_path / "play.jsonl"
    result = CliRunner().invoke(
        main,
        ["play", "--fast", "--duration", "16", "--interval", "4", "--source", "sim:tour?leg=8",
         "--text", "composer", "--audio", str(mono_bundle), "--out", str(wav), "--log", str(log)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    audio, info = read_wav(wav)
    assert audio.shape == (16 * SR, 2)
    assert anchor_from_metadata(MusicGen.load(mono_bundle), info.metadata) is not None
    lines = [msgspec.json.decode(line) for line in log.read_text().splitlines()]
    records = [r for r in lines if "summary" not in r]
    assert "summary" in lines[-1] and len(records) == len(lines) - 1
    assert records and all(r["audio_backend"].startswith("musicgen:") and not r["fallbacks"] for r in records)


def test_audio_auto_takes_a_bundle_only_where_it_keeps_up(
    mono_bundle: Path, tmp_path: Path, monkeypatch, caplog
):
    import logging
    import shutil

    from metabgm_edge import cli
    from metabgm_edge.doctor import check_engines

    engines = tmp_path / "engines"
    monkeypatch.setattr(cli, "ENGINES_DIR", engines)
    with caplog.at_level(logging.INFO, logger="metabgm_edge"):
        assert cli.open_audio("auto").kind == "synth"
    assert "no MusicGen bundle" in caplog.text
    shutil.copytree(mono_bundle, engines / "tiny-fp32")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metabgm_edge"):
        fast = cli.open_audio("auto")
    assert fast.kind == "musicgen" and "s of audio per second here" in caplog.text
    monkeypatch.setattr(MusicGen, "realtime_factor", lambda self: 0.4)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metabgm_edge"):
        slow = cli.open_audio("auto")
    assert slow.kind == "synth" and "renders only 0.40 s of audio per second" in caplog.text
    assert cli.open_audio("auto", realtime=False).kind == "musicgen"  # render and --fast: speed is no matter
    check = check_engines(engines)
    assert (
        check.status == "ok" and "musicgen" in check.detail and "--audio auto takes this one" in check.detail
    )
