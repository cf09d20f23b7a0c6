"""Sound sources of the procedural synthesizer: instrument voices, drum one-shots, the room, the
master limiter. NumPy only, vectorised per note.

Voices are band-limited wavetables (harmonics above ~12 kHz are never generated, so nothing
aliases and nothing is harsh), read with linear interpolation and shaped by smooth envelopes
(every note starts and ends at zero: no clicks). Plucked and struck voices morph from a bright
to a dark table as they decay, as real strings do. The room is a convolution with a synthetic
stereo impulse response whose highs die sooner than its lows. Tables, one-shots and impulse
responses are built once and cached.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = [
    "DRUMS",
    "DRUM_HZ",
    "VOICES",
    "Room",
    "VoiceDef",
    "limit",
    "note_extent",
    "remove_dc",
    "render_drum",
    "render_note",
    "tilt",
]

SR: Final = 32000
TABLE_N: Final = 2048
_MAX_HARMONIC_HZ: Final = 12000.0


def _rolloff(f: np.ndarray, fc: float) -> np.ndarray:
    return 1.0 / (1.0 + (f / fc) ** 4)


def _gauss(f: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((f - center) / width) ** 2)


# Harmonic recipes: amplitude of harmonic k (array) of fundamental f0, for a brightness b (0..1).
def _piano_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.0 * _rolloff(k * f0, 5000 * (0.45 + 1.1 * b))


def _piano_d(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.7 * _rolloff(k * f0, 2000 * (0.45 + 1.1 * b))


def _epiano_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-2.2 * _rolloff(k * f0, 2600 * (0.45 + 1.1 * b)) + 0.12 * (k == 4)


def _epiano_d(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-3.0


def _guitar_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.0 * (0.15 + np.abs(np.sin(np.pi * k * 0.18))) * _rolloff(k * f0, 4200 * (0.45 + 1.1 * b))


def _guitar_d(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.9 * _rolloff(k * f0, 2000)


def _harp_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.5 * _rolloff(k * f0, 4000 * (0.45 + 1.1 * b))


def _harp_d(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-2.1


def _strings(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.0 * _rolloff(k * f0, 3500 * (0.45 + 1.1 * b))


def _cello(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.0 * _rolloff(k * f0, 2200 * (0.45 + 1.1 * b))


def _pad(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.3 * _rolloff(k * f0, 2000 * (0.45 + 1.1 * b))


def _choir(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    f = k * f0  # vowel formants colour the harmonics; the fundamental stays the strongest, so the
    # pitch heard (and its chroma) is the note sung, not a formant's harmonic
    formants = _gauss(f, 720, 160) + 0.55 * _gauss(f, 1150, 190) + 0.22 * _gauss(f, 2600, 280)
    return k**-1.1 * (0.55 + formants) * _rolloff(f, 4000)


def _voice(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    f = k * f0  # an open "ah": formants near 800, 1200 and 2800 Hz
    formants = _gauss(f, 800, 140) + 0.6 * _gauss(f, 1200, 170) + 0.3 * _gauss(f, 2800, 280)
    return k**-1.1 * (0.5 + formants) * _rolloff(f, 3500 * (0.45 + 1.1 * b))


def _brass_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-0.9 * _rolloff(k * f0, 3000 * (0.45 + 1.1 * b))


def _brass_d(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.7 * _rolloff(k * f0, 1200)


def _flute(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    amps = np.array([1.0, 0.3, 0.12, 0.05, 0.02, 0.01])
    out = np.zeros_like(k)
    idx = k.astype(int) - 1
    ok = idx < len(amps)
    out[ok] = amps[idx[ok]]
    return out


def _synth_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    odd = (k % 2 == 1) + 0.3 * (k % 2 == 0)
    return odd * k**-1.0 * _rolloff(k * f0, 3000 * (0.45 + 1.1 * b))


def _synth_d(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    odd = (k % 2 == 1) + 0.3 * (k % 2 == 0)
    return odd * k**-1.0 * _rolloff(k * f0, 1000)


def _organ(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    bars = {1: 1.0, 2: 0.55, 3: 0.4, 4: 0.28, 6: 0.12, 8: 0.08}
    return np.array([bars.get(int(x), 0.0) for x in k]) * _rolloff(k * f0, 4500)


def _bass(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.7 * _rolloff(k * f0, 650 * (0.7 + 0.6 * b))


def _pbass_b(k: np.ndarray, f0: float, b: float) -> np.ndarray:
    return k**-1.1 * _rolloff(k * f0, 2400 * (0.45 + 1.1 * b))


@dataclass(frozen=True)
class VoiceDef:
    """How one instrument sounds. ``kind``: sustain (ADSR while held), pluck (decays on its own,
    damped on release), bell (inharmonic partials)."""

    name: str
    kind: str
    bright: object  # recipe
    dark: object | None = None  # recipe; None: no morph
    attack: float = 0.01
    decay: float = 0.3
    sustain: float = 0.8
    release: float = 0.2
    tau: float = 1.0  # pluck/bell decay at 220 Hz (s)
    tau_exp: float = 0.5  # how decay shortens with pitch
    morph: float = 0.2  # seconds of the bright->dark (pluck) or swell (brass) morph
    detune: tuple[float, ...] = (0.0,)
    spread: float = 0.0
    vibrato: tuple[float, float, float] = (0.0, 5.0, 0.3)  # cents, Hz, delay s
    breath: float = 0.0
    click: float = 0.0
    """Level of the finger or hammer noise at the onset (a plucked string's attack)."""
    gain: float = 1.0
    send: float = 0.3


VOICES: Final[dict[str, VoiceDef]] = {
    v.name: v
    for v in (
        VoiceDef("piano", "pluck", _piano_b, _piano_d, attack=0.003, release=0.12, tau=2.4, tau_exp=0.6,
                 morph=0.5, click=0.06, gain=0.95, send=0.32),
        VoiceDef("epiano", "pluck", _epiano_b, _epiano_d, attack=0.004, release=0.15, tau=2.6, tau_exp=0.5,
                 morph=0.5, detune=(-3.0, 3.0), spread=0.3, gain=0.9, send=0.3),
        VoiceDef("guitar", "pluck", _guitar_b, _guitar_d, attack=0.002, release=0.1, tau=1.4, tau_exp=0.5,
                 morph=0.15, click=0.1, gain=0.9, send=0.28),
        VoiceDef("harp", "pluck", _harp_b, _harp_d, attack=0.003, release=0.3, tau=2.3, tau_exp=0.5,
                 morph=0.25, click=0.08, gain=0.85, send=0.4),
        VoiceDef("pizz", "pluck", _strings, _cello, attack=0.004, release=0.08, tau=0.35, tau_exp=0.3,
                 morph=0.08, click=0.1, gain=0.9, send=0.35),
        VoiceDef("bells", "bell", None, attack=0.002, release=0.4, tau=3.0, tau_exp=0.3, gain=1.0, send=0.5),
        VoiceDef("strings", "sustain", _strings, attack=0.25, decay=0.4, sustain=0.85, release=0.45,
                 detune=(-7.0, 0.0, 7.0), spread=0.5, vibrato=(9.0, 5.3, 0.25), gain=0.9, send=0.45),
        VoiceDef("spicc", "sustain", _strings, attack=0.025, decay=0.12, sustain=0.55, release=0.09,
                 detune=(-5.0, 5.0), spread=0.4, gain=0.9, send=0.4),
        VoiceDef("cello", "sustain", _cello, attack=0.16, decay=0.4, sustain=0.85, release=0.45,
                 detune=(-4.0, 4.0), spread=0.2, vibrato=(11.0, 5.0, 0.25), gain=1.0, send=0.4),
        VoiceDef("pad", "sustain", _pad, attack=0.9, decay=1.0, sustain=0.9, release=1.6,
                 detune=(-10.0, 0.0, 10.0), spread=0.8, gain=0.85, send=0.5),
        VoiceDef("choir", "sustain", _choir, attack=0.45, decay=0.5, sustain=0.9, release=0.7,
                 detune=(-6.0, 6.0), spread=0.5, vibrato=(16.0, 4.8, 0.2), gain=0.85, send=0.55),
        VoiceDef("voice", "sustain", _voice, attack=0.05, decay=0.3, sustain=0.85, release=0.2,
                 vibrato=(22.0, 5.6, 0.25), breath=0.015, gain=0.9, send=0.4),
        VoiceDef("brass", "sustain", _brass_b, _brass_d, attack=0.06, decay=0.35, sustain=0.8, release=0.25,
                 morph=0.45, detune=(-4.0, 4.0), spread=0.2, vibrato=(6.0, 5.0, 0.4), gain=0.8, send=0.4),
        VoiceDef("flute", "sustain", _flute, attack=0.06, decay=0.2, sustain=0.85, release=0.12,
                 vibrato=(14.0, 5.2, 0.18), breath=0.03, gain=0.95, send=0.4),
        VoiceDef("synth", "sustain", _synth_b, _synth_d, attack=0.01, decay=0.3, sustain=0.6, release=0.18,
                 morph=0.25, detune=(-6.0, 6.0), spread=0.4, gain=0.7, send=0.35),
        VoiceDef("organ", "sustain", _organ, attack=0.02, decay=0.1, sustain=1.0, release=0.08,
                 detune=(0.0, 1.5), spread=0.3, gain=0.7, send=0.35),
        VoiceDef("pbass", "pluck", _pbass_b, _bass, attack=0.003, release=0.12, tau=1.6, tau_exp=0.3,
                 morph=0.06, click=0.25, gain=1.15, send=0.1),
        VoiceDef("bass", "sustain", _bass, attack=0.008, decay=0.35, sustain=0.55, release=0.09,
                 gain=1.1, send=0.08),
    )
}  # fmt: skip

_BELL_PARTIALS: Final = np.array([1.0, 2.0, 2.76, 4.07, 5.4])
_BELL_AMPS: Final = np.array([1.0, 0.4, 0.5, 0.22, 0.14])
_BELL_TAUS: Final = np.array([1.0, 0.6, 0.42, 0.26, 0.16])


def midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


@functools.lru_cache(maxsize=2048)
def _table(recipe: object, midi: int, bright_level: int) -> tuple[np.ndarray, np.ndarray]:
    """One cycle of TABLE_N samples with RMS 0.5 (harmonics kept below 12 kHz), and the
    differences to the next sample (for linear interpolation with one gather each)."""
    f0 = midi_hz(midi)
    kmax = max(1, min(64, int(_MAX_HARMONIC_HZ // f0)))
    k = np.arange(1, kmax + 1, dtype=np.float64)
    amps = np.asarray(recipe(k, f0, bright_level / 4.0), dtype=np.float64)  # type: ignore[operator]
    phases = np.random.default_rng(7).uniform(0, 2 * np.pi, kmax)  # spread peaks (lower crest factor)
    phases[0] = 0.0
    x = np.arange(TABLE_N, dtype=np.float64) / TABLE_N
    wave = (amps[:, None] * np.sin(2 * np.pi * k[:, None] * x[None, :] + phases[:, None])).sum(axis=0)
    rms = float(np.sqrt(np.mean(wave**2))) or 1.0
    wave *= 0.5 / rms
    return wave.astype(np.float32), (np.roll(wave, -1) - wave).astype(np.float32)


_INDEX = np.arange(SR * 60, dtype=np.float64)  # shared ramp for oscillator phases (60 s notes max)
_CTRL = 16  # envelopes and modulations are computed every 16 samples and interpolated


def _lookup(table: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Linear-interpolated wavetable read at table positions ``x`` (float64, any size)."""
    i = x.astype(np.int64)
    frac = (x - i).astype(np.float32)
    i &= TABLE_N - 1
    return table[0][i] + frac * table[1][i]


def _upsample(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of control-rate points (one every _CTRL samples) to ``n`` samples."""
    m = ctrl.shape[0] - 1
    ramp = np.arange(_CTRL, dtype=np.float32) / _CTRL
    fine = ctrl[:-1, None] + (ctrl[1:] - ctrl[:-1])[:, None] * ramp[None, :]
    return fine.reshape(m * _CTRL)[:n]


def _decay_tau(v: VoiceDef, f0: float) -> float:
    return float(np.clip(v.tau * (220.0 / f0) ** v.tau_exp, 0.15, 8.0))


def note_extent(voice: str, midi: float, length: int) -> int:
    """Samples from the onset until the note is silent (gate plus release or natural decay)."""
    if voice in DRUMS:
        return _drum_len(voice)
    v = VOICES[voice]
    if v.kind == "sustain":
        return length + int(v.release * 5.0 * SR)
    tau = _decay_tau(v, midi_hz(midi))
    natural = int(tau * 6.0 * SR)
    damped = length + int(v.release * 5.0 * SR)
    return max(64, min(natural, damped))


_CLICK_N: Final = int(0.03 * SR)


@functools.lru_cache(maxsize=1)
def _click_noise() -> np.ndarray:
    """30 ms of 1-9 kHz noise decaying in about 6 ms: a finger on a string, a hammer on felt."""
    rng = np.random.default_rng(13)
    t = np.arange(_CLICK_N) / SR
    burst = _band_noise(rng, _CLICK_N, 1000.0, 9000.0) * np.exp(-t / 0.006) * np.clip(t / 0.0008, 0, 1)
    return burst.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _breath_noise() -> np.ndarray:
    rng = np.random.default_rng(11)
    n = SR * 2
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec *= _gauss(f, 2500, 1200) + 0.3 * _gauss(f, 6000, 2000)
    out = np.fft.irfft(spec, n)
    return (out / np.sqrt(np.mean(out**2))).astype(np.float32)


def render_note(
    voice: str,
    midi: float,
    start: int,
    length: int,
    vel: float,
    pan: float,
    seed: int,
    out: np.ndarray,
    send: np.ndarray,
    win_start: int,
    *,
    brightness: float = 0.5,
    send_scale: float = 1.0,
) -> None:
    """Add one note to ``out`` (2, n) and the reverb ``send`` (n,), both starting at absolute
    sample ``win_start``. The part of the note outside the window is skipped."""
    if voice in DRUMS:
        render_drum(voice, start, vel, pan, seed, out, send, win_start, midi=midi, send_scale=send_scale)
        return
    v = VOICES[voice]
    extent = note_extent(voice, midi, length)
    n_win = out.shape[1]
    i0 = max(start, win_start)
    i1 = min(start + extent, win_start + n_win)
    if i1 <= i0:
        return
    n = i1 - i0
    off = i0 - start  # samples since the onset at the first rendered sample
    f0 = midi_hz(midi)
    gate = length / SR
    end_t = extent / SR
    # Control-rate time axis (float32 is plenty for envelopes).
    m = -(-n // _CTRL)
    tc = ((off + np.arange(m + 1, dtype=np.float64) * _CTRL) / SR).astype(np.float32)
    gate32, end32 = np.float32(gate), np.float32(end_t)
    tg = np.minimum(tc, gate32)

    # Envelope.
    if v.kind == "sustain":
        att = np.clip(tg / np.float32(v.attack), 0.0, 1.0)
        att = att * att * (3.0 - 2.0 * att)  # smoothstep attack
        env = att * (v.sustain + (1.0 - v.sustain) * np.exp(-np.maximum(tg - v.attack, 0.0) / v.decay))
    else:
        att = np.clip(tc / np.float32(v.attack), 0.0, 1.0)
        env = att if v.kind == "bell" else att * np.exp(-tc / np.float32(_decay_tau(v, f0)))
    if gate < end_t:
        env = env * np.exp(-np.maximum(tc - gate32, 0.0) / np.float32(v.release))
    env = env * np.clip((end32 - tc) / np.float32(0.02), 0.0, 1.0)  # guaranteed zero at the end
    env = env.astype(np.float32) * np.float32(vel * v.gain)

    rng = np.random.default_rng(seed & 0xFFFFFFFF)
    sl = slice(i0 - win_start, i1 - win_start)

    if v.kind == "bell":
        t = _INDEX[off : off + n] / SR
        tf = t.astype(np.float32)
        sig = np.zeros(n, dtype=np.float32)
        taus = _BELL_TAUS * _decay_tau(v, f0)
        for ratio, amp, tau in zip(_BELL_PARTIALS, _BELL_AMPS, taus, strict=True):
            fp = f0 * ratio
            if fp > _MAX_HARMONIC_HZ:
                continue
            partial = np.sin((2 * np.pi * fp) * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)
            sig += partial * (np.float32(amp) * np.exp(-tf / np.float32(tau)))
        sig *= _upsample(env, n) * np.float32(0.45)
        gl, gr = _pan_gains(pan)
        out[0, sl] += sig * gl
        out[1, sl] += sig * gr
        send[sl] += sig * np.float32(v.send * send_scale)
        return

    b_level = round(float(np.clip(brightness, 0.0, 1.0)) * 4)
    midi_i = round(midi)
    bright_tab = _table(v.bright, midi_i, b_level)
    dark_tab = _table(v.dark, midi_i, b_level) if v.dark is not None else None
    vib_cents, vib_rate, vib_delay = v.vibrato
    vib = None
    if vib_cents > 0:  # phase offset of the vibrato, in seconds of the carrier
        tc64 = tc.astype(np.float64)
        depth = np.clip((tc64 - vib_delay) / 0.4, 0.0, 1.0) * (2.0 ** (vib_cents / 1200.0) - 1.0)
        vib = _upsample(depth * (1.0 - np.cos(2 * np.pi * vib_rate * tc64)) / (2 * np.pi * vib_rate), n)
    w = None
    if dark_tab is not None:
        if v.kind == "pluck":
            wc = np.exp(-tc / np.float32(v.morph))
        else:  # swell: dark at the onset, brightest after the attack, then settling
            wc = np.clip(tc / np.float32(max(v.attack, 0.02)), 0.0, 1.0) * (
                0.45 + 0.55 * np.exp(-tc / np.float32(v.morph))
            )
        w = _upsample(wc.astype(np.float32), n)
    ndet = len(v.detune)
    idx = _INDEX[off : off + n] if off + n <= _INDEX.shape[0] else np.arange(off, off + n, dtype=np.float64)
    sig_l = np.zeros(n, dtype=np.float32)
    sig_r = np.zeros(n, dtype=np.float32)
    for j, cents in enumerate(v.detune):
        fj = f0 * 2.0 ** (cents / 1200.0)
        x = idx * (fj * TABLE_N / SR) + rng.uniform(0.0, TABLE_N)
        if vib is not None:
            x += vib * (fj * TABLE_N)
        s = _lookup(bright_tab, x)
        if dark_tab is not None and w is not None:
            d = _lookup(dark_tab, x)
            s = d + w * (s - d)
        p = pan + (v.spread * ((j / (ndet - 1)) * 2 - 1) if ndet > 1 else 0.0)
        gl, gr = _pan_gains(p)
        if ndet == 1:
            sig_l, sig_r = s * gl, s * gr
        else:
            sig_l += s * gl
            sig_r += s * gr
    if v.breath > 0:
        noise = _breath_noise()
        start_at = int(rng.integers(0, noise.shape[0] - 1))
        nb = np.take(noise, np.arange(start_at, start_at + n) % noise.shape[0]) * np.float32(v.breath)
        gl, gr = _pan_gains(pan)
        sig_l = sig_l + nb * gl
        sig_r = sig_r + nb * gr
    envf = _upsample(env * np.float32(1.0 / math.sqrt(ndet)), n)
    left = sig_l * envf
    right = sig_r * envf
    if v.click > 0 and off < _CLICK_N:  # the attack noise, on the first samples only
        k = min(n, _CLICK_N - off)
        burst = _click_noise()[off : off + k] * np.float32(v.click * vel * v.gain)
        gl, gr = _pan_gains(pan)
        left[:k] += burst * gl
        right[:k] += burst * gr
    out[0, sl] += left
    out[1, sl] += right
    send[sl] += (left + right) * np.float32(0.5 * v.send * send_scale)


def _pan_gains(pan: float) -> tuple[np.float32, np.float32]:
    """Constant-power pan: -1 left, 0 centre (0.707 each side), +1 right."""
    theta = (min(1.0, max(-1.0, pan)) + 1.0) * math.pi / 4
    return np.float32(math.cos(theta)), np.float32(math.sin(theta))


# --- drums ----------------------------------------------------------------------------------

DRUMS: Final = (
    "kick",
    "kick_soft",
    "snare",
    "brush",
    "rim",
    "hat",
    "hat_open",
    "crash",
    "shaker",
    "tom_low",
    "tom_high",
)
_DRUM_SECONDS: Final = {
    "kick": 0.6, "kick_soft": 0.5, "snare": 0.45, "brush": 0.4, "rim": 0.12, "hat": 0.15, "hat_open": 0.5,
    "crash": 1.2, "shaker": 0.2, "tom_low": 0.9, "tom_high": 0.6,
}  # fmt: skip
_DRUM_GAIN: Final = {
    "kick": 0.8, "kick_soft": 0.75, "snare": 0.75, "brush": 0.45, "rim": 0.18, "hat": 0.16, "hat_open": 0.1,
    "crash": 0.16, "shaker": 0.5, "tom_low": 0.7, "tom_high": 0.45,
}  # fmt: skip
_DRUM_SEND: Final = {
    "kick": 0.05, "kick_soft": 0.08, "snare": 0.3, "brush": 0.3, "rim": 0.3, "hat": 0.15, "hat_open": 0.2,
    "crash": 0.3, "shaker": 0.2, "tom_low": 0.35, "tom_high": 0.35,
}  # fmt: skip


def _drum_len(name: str) -> int:
    return int(_DRUM_SECONDS[name] * SR)


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    mask = 1.0 / (1.0 + (lo / np.maximum(f, 1.0)) ** 4) / (1.0 + (f / hi) ** 4)
    out = np.fft.irfft(spec * mask, n)
    return out / (np.sqrt(np.mean(out**2)) or 1.0)


DRUM_HZ: Final = {"kick": 50.0, "kick_soft": 55.0, "snare": 185.0, "tom_low": 68.0, "tom_high": 118.0}
"""The pitched drums and their untuned fundamentals (the planner tunes them to the key)."""


@functools.lru_cache(maxsize=96)
def _drum_sample(name: str, variant: int, tune: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(1000 + 17 * variant + DRUMS.index(name))
    n = _drum_len(name)
    t = np.arange(n) / SR
    detune = tune * (1.0 + 0.004 * (variant - 1.5) / 1.5)
    if name in ("kick", "kick_soft"):
        soft = name == "kick_soft"
        f = (50.0 if not soft else 55.0) * detune + (85.0 if not soft else 45.0) * np.exp(-t / 0.035)
        phase = np.cumsum(f) / SR
        body = np.sin(2 * np.pi * phase) * np.exp(-t / (0.17 if not soft else 0.2))
        click = 0.0 if soft else 0.2 * _band_noise(rng, n, 800, 6000) * np.exp(-t / 0.005)
        s = body + click
    elif name == "snare":
        tone = 0.55 * np.sin(2 * np.pi * 185 * detune * t) * np.exp(-t / 0.07)
        tone += 0.25 * np.sin(2 * np.pi * 320 * detune * t) * np.exp(-t / 0.045)
        s = tone + 0.75 * _band_noise(rng, n, 900, 7000) * np.exp(-t / 0.12)
    elif name == "brush":
        env = np.clip(t / 0.025, 0, 1) * np.exp(-t / 0.14)
        s = _band_noise(rng, n, 700, 4500) * env
    elif name == "rim":
        s = (np.sin(2 * np.pi * 820 * detune * t) + 0.4 * np.sin(2 * np.pi * 1370 * detune * t)) * np.exp(
            -t / 0.022
        )
    elif name == "crash":
        s = _band_noise(rng, n, 3000, 12000) * np.exp(-t / 0.45) * np.clip(t / 0.002, 0, 1)
    elif name in ("hat", "hat_open"):
        s = _band_noise(rng, n, 6000, 11000) * np.exp(-t / (0.035 if name == "hat" else 0.16))
    elif name == "shaker":
        s = _band_noise(rng, n, 3500, 9000) * np.clip(t / 0.018, 0, 1) * np.exp(-t / 0.05)
    elif name == "tom_low":
        f = 68.0 * detune + 30.0 * np.exp(-t / 0.06)
        s = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t / 0.3)
        s += 0.15 * _band_noise(rng, n, 100, 900) * np.exp(-t / 0.03)
    else:  # tom_high
        f = 118.0 * detune + 40.0 * np.exp(-t / 0.05)
        s = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-t / 0.28)
        s += 0.12 * _band_noise(rng, n, 200, 1800) * np.exp(-t / 0.025)
    s = s * np.clip(t / 0.001, 0, 1)  # 1 ms fade-in
    fade = max(1, int(0.01 * SR))
    s[-fade:] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.max(np.abs(s))) or 1.0
    return (s / peak * _DRUM_GAIN[name]).astype(np.float32)


def render_drum(
    name: str,
    start: int,
    vel: float,
    pan: float,
    seed: int,
    out: np.ndarray,
    send: np.ndarray,
    win_start: int,
    *,
    midi: float = 0.0,
    send_scale: float = 1.0,
) -> None:
    """One drum hit; a pitched drum (kick, snare, toms) is tuned to ``midi`` when it is above 0."""
    tune = 1.0
    if midi > 0 and name in DRUM_HZ:
        tune = round(midi_hz(midi) / DRUM_HZ[name], 4)
    sample = _drum_sample(name, seed % 4, tune)
    n_win = out.shape[1]
    i0 = max(start, win_start)
    i1 = min(start + sample.shape[0], win_start + n_win)
    if i1 <= i0:
        return
    s = sample[i0 - start : i1 - start] * np.float32(vel)
    gl, gr = _pan_gains(pan)
    sl = slice(i0 - win_start, i1 - win_start)
    out[0, sl] += s * gl
    out[1, sl] += s * gr
    send[sl] += s * np.float32(_DRUM_SEND[name] * send_scale)


# --- the room -------------------------------------------------------------------------------


class Room:
    """Convolution reverb with a synthetic stereo impulse response (cached per decay time)."""

    def __init__(self) -> None:
        self._spectra: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    @functools.lru_cache(maxsize=16)
    def impulse_response(rt60: float) -> np.ndarray:
        """(2, n) stereo IR, unit energy per channel."""
        length = min(3.5, rt60 * 1.1)
        n = int(length * SR)
        t = np.arange(n) / SR
        rng = np.random.default_rng(int(rt60 * 1000))
        f = np.fft.rfftfreq(n, 1 / SR)
        bands = ((0, 500, 1.0), (500, 2000, 0.85), (2000, 6000, 0.6), (6000, 16000, 0.35))
        ir = np.zeros((2, n))
        for ch in range(2):
            spec = np.fft.rfft(rng.standard_normal(n))
            for lo, hi, factor in bands:
                mask = ((f >= lo) & (f < hi)).astype(float)
                band = np.fft.irfft(spec * mask, n)
                ir[ch] += band * np.exp(-6.91 * t / (rt60 * factor))
        predelay = int(0.012 * SR)
        ir = np.roll(ir, predelay, axis=1)
        ir[:, :predelay] = 0.0
        ir *= np.clip((t - 0.012) / 0.03, 0, 1)[None, :]  # diffuse build-up
        for ch, taps in enumerate(((0.017, 0.029, 0.041, 0.053), (0.021, 0.033, 0.047, 0.061))):
            for i, d in enumerate(taps):
                ir[ch, int(d * SR)] += 0.6 * (0.75**i) * np.sqrt(np.sum(ir[ch] ** 2) / n) * 40
        fade = int(0.2 * SR)
        ir[:, -fade:] *= np.linspace(1.0, 0.0, fade)[None, :]
        ir /= np.sqrt(np.sum(ir**2, axis=1, keepdims=True))
        return ir.astype(np.float32)

    def apply(self, send: np.ndarray, rt60: float) -> np.ndarray:
        """The wet stereo signal (2, len(send)) for a mono ``send``."""
        rt60 = round(float(np.clip(rt60, 0.6, 4.0)), 1)
        ir = self.impulse_response(rt60)
        n = send.shape[0]
        nfft = _fast_len(n + ir.shape[1] - 1)
        key = (rt60, nfft)
        spectra = self._spectra.get(key)
        if spectra is None:
            if len(self._spectra) > 8:
                self._spectra.clear()
            spectra = (np.fft.rfft(ir[0], nfft), np.fft.rfft(ir[1], nfft))
            self._spectra[key] = spectra
        s = np.fft.rfft(send, nfft)
        left = np.fft.irfft(s * spectra[0], nfft)[:n]
        right = np.fft.irfft(s * spectra[1], nfft)[:n]
        return np.stack([left, right]).astype(np.float32)


def _fast_len(n: int) -> int:
    """Smallest 2^a * 3^b >= n (fast sizes for numpy's FFT)."""
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        v = p3
        while v < n:
            v *= 2
        best = min(best, v)
        p3 *= 3
    return best


# --- master ---------------------------------------------------------------------------------


def tilt(x: np.ndarray, brightness: float, pivot_hz: float = 900.0) -> np.ndarray:
    """Tilt the spectrum of (2, n) around ``pivot_hz``: brightness 0.5 leaves it as it is, 1 lifts
    the highs and lowers the lows by about 2.4 dB per octave, 0 the reverse (dark music sounds
    darker, bright music brighter). Zero-phase, applied in the frequency domain."""
    slope = float(np.clip(brightness, 0.0, 1.0) - 0.5) * 0.8  # amplitude exponent per octave / ln 2
    if abs(slope) < 0.02:
        return x
    n = x.shape[1]
    pad = 1024  # keep the circular wrap of the edges out of the signal
    nfft = _fast_len(n + pad)
    f = np.fft.rfftfreq(nfft, 1.0 / SR)
    gain = np.clip((np.maximum(f, 40.0) / pivot_hz) ** slope, 0.25, 4.0).astype(np.float32)
    spec = np.fft.rfft(x.astype(np.float32, copy=False), nfft, axis=1)
    spec *= gain[None, :]
    return np.fft.irfft(spec, nfft, axis=1)[:, :n].astype(np.float32)


def remove_dc(x: np.ndarray, window: int = 2048) -> np.ndarray:
    """Subtract a (twice) centred moving average: a linear-phase high-pass around 10 Hz."""
    half = window // 2
    pad = np.pad(x.astype(np.float64), ((0, 0), (window, window)), mode="edge")
    for _ in range(2):
        c = np.cumsum(pad, axis=1)
        c = np.concatenate([np.zeros((pad.shape[0], 1)), c], axis=1)
        avg = (c[:, window:] - c[:, :-window]) / window
        pad = np.pad(avg, ((0, 0), (half, window - half - 1)), mode="edge")
    low = pad[:, window : window + x.shape[1]]
    return (x - low).astype(np.float32)


def limit(
    x: np.ndarray, threshold: float = 0.8, block: int = 256, release_s: float = 0.25, start_gain: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gentle look-ahead peak limiter on (2, n). Returns (limited, per-block gain)."""
    n = x.shape[1]
    nb = (n + block - 1) // block
    padded = np.zeros((2, nb * block), dtype=np.float32)
    padded[:, :n] = x
    peaks = np.abs(padded).reshape(2, nb, block).max(axis=(0, 2))
    # Soft knee: start reducing at 70% of the threshold, never let a peak past it.
    knee = 0.7 * threshold
    req = np.ones(nb)
    over = peaks > knee
    target = knee + (threshold - knee) * np.tanh((peaks[over] - knee) / (threshold - knee))
    req[over] = target / peaks[over]
    step = block / (release_s * SR)
    g = np.empty(nb)
    cur = min(1.0, start_gain)
    for i in range(nb):  # attack at once (look-ahead below), release gradually
        cur = min(req[i], cur + step * (1.0 - cur) + 1e-4)
        g[i] = cur
    edges = np.minimum(np.concatenate([[g[0]], g]), np.concatenate([g, [g[-1]]]))  # nb + 1 points
    ramp = np.linspace(0.0, 1.0, block, endpoint=False, dtype=np.float32)
    gains = (edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * ramp[None, :]).astype(np.float32)
    y = padded * gains.reshape(-1)[None, :]
    return y[:, :n], g
