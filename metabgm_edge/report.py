"""``metabgm-edge report``: one PNG that shows what a session did and why it sounded as it did.

Panels, all on the session's time axis (seconds):

1. scene: biome, phase of day, weather and combat as coloured bands over each segment's window,
   sharp scene changes marked;
2. health at the end of each window and the lowest health seen in it;
3. music: when each segment's audio is heard (``#k`` plus its description when there is room);
4. stage latencies per segment, stacked (characterize, narrative, description, audio), drawn at
   the moment the segment's window closed, against the deadline; deadline misses and fallbacks
   are marked in red;
5. a spectrogram of the session's WAV (numpy STFT), when ``--audio`` is given;

then the full descriptions, one line per segment.

The log is JSON lines of :class:`~metabgm_edge.session_log.SegmentRecord`. Malformed lines are
skipped with a warning naming the line. ``play`` appends to its log, so one file may hold several
sessions (the segment index starts again at 0): the report shows one of them, the last by default.

The WAV starts when the first segment was queued (``queued_at`` of the ``start`` segment: 0 in a
``--fast`` session, the first render's time in real time), so it is placed there on the time axis.
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np

from metabgm_edge.session_log import SegmentRecord, SessionSummary

log = logging.getLogger(__name__)

INSTALL_HINT: Final = "pip install 'metabgm-edge[report]'"
STAGES: Final = ("characterize", "narrative", "description", "direct", "audio")
STAGE_COLORS: Final = {
    "characterize": "#8c8c8c",
    "narrative": "#4c72b0",
    "description": "#55a868",
    "direct": "#55a868",
    "audio": "#dd8452",
}
PHASE_COLORS: Final = {"sunrise": "#f6c28b", "day": "#fbe7a1", "sunset": "#e8a07a", "night": "#3b4a6b"}
WEATHER_COLORS: Final = {"clear": "#cfe8fc", "rain": "#7f9fbf", "thunder": "#4a4e69", "snow": "#f2f4f7"}
JOIN_COLORS: Final = {"start": "#9ecae1", "append": "#c6dbef", "transition": "#fdae6b", "extend": "#d9d9d9"}
DARK: Final = frozenset({"#3b4a6b", "#4a4e69"})
MAX_SPECTROGRAM_COLUMNS: Final = 3000


# -- the log ---------------------------------------------------------------------------------------


def load_log(path: str | Path) -> list[list[SegmentRecord]]:
    """The sessions in a session log, each a list of records in file order.

    Blank lines are ignored; a line that is not a valid record is skipped with a warning naming
    its number. Raises ValueError when the file holds no valid record at all.
    """
    path = Path(path)
    decoder = msgspec.json.Decoder(SegmentRecord)
    summary = msgspec.json.Decoder(SessionSummary)
    sessions: list[list[SegmentRecord]] = []
    skipped: list[int] = []
    first_error = ""
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                try:
                    summary.decode(line)  # the session's totals: not a segment
                    continue
                except (msgspec.DecodeError, msgspec.ValidationError):
                    pass
                skipped.append(lineno)
                first_error = first_error or str(exc)
                if len(skipped) <= BAD_LINES_LOGGED:
                    log.warning("%s line %d: not a session-log record, skipped (%s)", path, lineno, exc)
                continue
            if not sessions or rec.index <= sessions[-1][-1].index:
                sessions.append([])
            sessions[-1].append(rec)
    if len(skipped) > BAD_LINES_LOGGED:
        log.warning("%s: %d more lines skipped (lines %s)", path, len(skipped) - BAD_LINES_LOGGED,
                    _ranges(skipped[BAD_LINES_LOGGED:]))  # fmt: skip
    if not sessions:
        hint = ""
        if skipped and _looks_like_one_json_document(path):
            hint = " (it looks like one JSON document; a session log has one JSON object per line)"
        raise ValueError(
            f"{path}: no valid segment record in it"
            + (f" ({len(skipped)} malformed lines{hint})" if skipped else " (the file is empty)")
            + "; write one with `metabgm-edge play --log FILE.jsonl`"
        )
    return sessions


BAD_LINES_LOGGED = 5
"""Malformed lines of a log named one by one; the rest are summed up in one line."""


def _ranges(numbers: list[int]) -> str:
    """1,2,3,7,9,10 -> "1-3, 7, 9-10"."""
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _looks_like_one_json_document(path: Path) -> bool:
    try:
        msgspec.json.decode(path.read_bytes())
        return True
    except (msgspec.DecodeError, OSError):
        return False


def pick_session(
    sessions: list[list[SegmentRecord]], number: int | None, path: str | Path
) -> list[SegmentRecord]:
    """Session ``number`` (1-based; None: the last), warning when the log holds several."""
    if number is None:
        if len(sessions) > 1:
            log.warning(
                "%s holds %d sessions; reporting the last, --session N picks another",
                path,
                len(sessions),
            )
        return sessions[-1]
    if not 1 <= number <= len(sessions):
        raise ValueError(f"{path} holds {len(sessions)} session(s); --session must be 1..{len(sessions)}")
    return sessions[number - 1]


# -- derived timelines -----------------------------------------------------------------------------


@dataclass
class Heard:
    """When one segment's audio is heard on the session clock."""

    index: int
    start: float
    end: float
    join: str
    description: str


def heard_spans(records: list[SegmentRecord]) -> list[Heard]:
    """Where each segment's audio plays on the session clock.

    A start or a transition enters when it is queued and drops whatever was queued after that
    moment (the mixer's transition does the same: a queued segment not yet heard is never heard);
    an appended or extended segment follows the one before it.
    """
    spans: list[Heard] = []
    for rec in records:
        if rec.heard_at is not None:  # logged by the scheduler: where it joined
            begin = rec.heard_at
            spans = [h for h in spans if h.start < begin]
            for h in spans:
                h.end = min(h.end, begin)
        elif rec.join in ("start", "transition") or not spans:
            begin = rec.queued_at
            spans = [h for h in spans if h.start < begin]
            for h in spans:
                h.end = min(h.end, begin)
        else:
            begin = max(spans[-1].end, rec.queued_at)
        spans.append(Heard(rec.index, begin, begin + rec.audio_seconds, rec.join, rec.description))
    return spans


def stft_db(
    mono: np.ndarray, sample_rate: int, *, n_fft: int = 4096, max_columns: int = MAX_SPECTROGRAM_COLUMNS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude spectrogram in dB (frequency x time), its frame times and bin frequencies.

    The hop grows with the length so a long session still gives at most ``max_columns`` frames.
    """
    n = mono.shape[0]
    hop = max(n_fft // 4, math.ceil(max(n - n_fft, 1) / max_columns))
    if n < n_fft:
        mono = np.pad(mono, (0, n_fft - n))
        n = n_fft
    starts = np.arange(0, n - n_fft + 1, hop)
    window = np.hanning(n_fft).astype(np.float32)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    out = np.empty((freqs.shape[0], starts.shape[0]), dtype=np.float32)
    block = 256
    for i in range(0, starts.shape[0], block):
        idx = starts[i : i + block, None] + np.arange(n_fft)[None, :]
        frames = mono[idx] * window
        mag = np.abs(np.fft.rfft(frames, axis=1)) / (window.sum() / 2)
        out[:, i : i + block] = (20 * np.log10(np.maximum(mag, 1e-7))).T
    times = (starts + n_fft / 2) / sample_rate
    return out, times, freqs


# -- the figure ------------------------------------------------------------------------------------


def _new_figure(width: float, height: float, dpi: int) -> Any:
    """A figure on the Agg canvas, without pyplot (no global backend switch, nothing to close)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError(f"the report needs matplotlib: {INSTALL_HINT}") from None
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(f"the report needs matplotlib: {INSTALL_HINT}") from None


def _phase(rec: SegmentRecord) -> str:
    return rec.state.time.resolved_phase()


def _bands(ax: Any, records: list[SegmentRecord], rows: list[tuple[str, Any, Any]]) -> None:
    """One row per (label, value-of(record), colour-of(value)); equal neighbours merge into one band."""
    for row, (_label, value_of, color_of) in enumerate(rows):
        y = len(rows) - 1 - row
        runs: list[list[Any]] = []
        for rec in records:
            if rec.end <= rec.start:
                continue
            v = value_of(rec)
            if runs and runs[-1][2] == v and abs(runs[-1][1] - rec.start) < 1e-6:
                runs[-1][1] = rec.end
            else:
                runs.append([rec.start, rec.end, v])
        for start, end, v in runs:
            color = color_of(v)
            ax.broken_barh(
                [(start, end - start)], (y + 0.08, 0.84), facecolors=color, edgecolors="white", linewidth=0.8
            )
            if v not in (None, "", False):
                ax.text(
                    (start + end) / 2,
                    y + 0.5,
                    str(v).replace("_", " "),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if color in DARK else "#222222",
                    clip_on=True,
                )
    ax.set_yticks([len(rows) - 1 - i + 0.5 for i in range(len(rows))], [r[0] for r in rows])
    ax.set_ylim(0, len(rows))
    ax.tick_params(axis="y", length=0)


def _biome_color(names: list[str]) -> Any:
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    order = {name: i for i, name in enumerate(dict.fromkeys(names))}
    return lambda v: palette((2 * order.get(v, 0) + 1) % 20)


def _mark_changes(axes: list[Any], records: list[SegmentRecord]) -> None:
    for rec in records:
        if rec.trigger not in ("interval", "start", "end"):
            for ax in axes:
                ax.axvline(rec.end, color="#c0392b", linewidth=0.9, linestyle=":", zorder=5)


def _music_panel(ax: Any, spans: list[Heard], fig_width_in: float, x_range: float) -> None:
    from matplotlib.patches import Rectangle

    ax.set_ylim(0, 1)
    ax.set_yticks([])
    inch_per_s = fig_width_in * 0.86 / max(x_range, 1e-9)
    for h in spans:
        if h.end <= h.start:
            continue
        box = Rectangle(
            (h.start, 0.04),
            h.end - h.start,
            0.92,
            facecolor=JOIN_COLORS.get(h.join, "#eeeeee"),
            edgecolor="#555555",
            linewidth=0.6,
        )
        ax.add_patch(box)
        chars = int((h.end - h.start) * inch_per_s * 72 / 4.0)  # ~4 pt per character at 7 pt
        head = f"#{h.index}" + (f" {h.join}" if h.join != "append" and chars >= 14 else "")
        what = "(the previous music, extended: this render failed)" if h.join == "extend" else h.description
        wrapped = textwrap.wrap(what, width=max(chars - 1, 1)) if chars >= 12 else []
        if len(wrapped) > 5:
            wrapped = [*wrapped[:4], wrapped[4][: max(chars - 2, 1)] + "…"]
        text = ax.text(
            h.start + min(0.3, 0.03 * (h.end - h.start)),
            0.93,
            "\n".join([head, *wrapped]),
            ha="left",
            va="top",
            fontsize=7,
            linespacing=1.15,
            clip_on=True,
        )
        text.set_clip_path(box)  # never spills into the next segment's box


def short_fallback(name: str) -> str:
    """``text.narrative.error`` -> ``narr err``: short enough to stack above a bar."""
    parts = name.split(".")
    if parts[0] == "text" and len(parts) == 3:
        return f"{parts[1][:4]} {'late' if parts[2] == 'deadline' else parts[2][:5]}"
    if parts[0] == "audio" and len(parts) == 2:
        return {"deadline": "audio late", "error": "audio err", "replaced": "synth in"}.get(parts[1], name)
    return name


def _latency_panel(ax: Any, records: list[SegmentRecord], interval: float) -> str:
    """Stacked stage times per segment; returns a one-line summary for the panel title."""
    stages = [s for s in STAGES if any(s in r.timings for r in records)]
    width = max(0.4, 0.35 * interval)
    xs = np.array([r.end for r in records])
    bottom = np.zeros(len(records))
    for stage in stages:
        vals = np.array([r.timings.get(stage, 0.0) for r in records])
        ax.bar(xs, vals, width=width, bottom=bottom, color=STAGE_COLORS[stage], label=stage, align="center")
        bottom += vals
    budgets = np.array([r.deadline - r.end for r in records])
    worst = float(bottom.max()) if bottom.size else 0.0
    budget = float(np.median(budgets)) if budgets.size else 0.0
    flagged = [
        (r, x, t) for r, x, t in zip(records, xs, bottom, strict=True) if r.missed_deadline or r.fallbacks
    ]
    tags = max((len(r.fallbacks) + r.missed_deadline for r, _, _ in flagged), default=0)
    top = max(worst, 1e-3)
    note = ""
    if budget <= worst * 1.6:
        top = max(top, budget)
        ax.hlines(budgets, xs - width / 2, xs + width / 2, colors="#c0392b", linestyles="--", linewidth=1.4,
                  label="deadline")  # fmt: skip
    else:
        note = f"; deadline {budget:g} s is off scale (the slowest used {100 * worst / budget:.1f} %)"
    top *= 1.15 + 0.12 * tags  # room for the labels above the bars
    ax.set_ylim(0, top)
    for rec, x, total in flagged:
        ax.bar([x], [total], width=width, fill=False, edgecolor="#c0392b", linewidth=1.6)
        lines = (["MISSED"] if rec.missed_deadline else []) + [short_fallback(f) for f in rec.fallbacks]
        ax.text(x, total + top * 0.02, "\n".join(lines), ha="center", va="bottom", fontsize=6.5,
                color="#c0392b", clip_on=True, linespacing=1.05)  # fmt: skip
    ax.set_ylabel("seconds")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=len(stages) + 1, frameon=False,
              borderaxespad=0.1)  # fmt: skip
    misses = sum(r.missed_deadline for r in records)
    fallbacks = sum(len(r.fallbacks) for r in records)
    return f"{misses} misses, {fallbacks} fallbacks{note}"


def _spectrogram_panel(ax: Any, mono: np.ndarray, sample_rate: int, offset: float, name: str) -> None:
    """Draw the spectrogram of ``mono`` placed at ``offset`` s on the session's time axis."""
    db, times, freqs = stft_db(mono, sample_rate)
    keep = (freqs >= 30) & (freqs <= min(16000, sample_rate / 2))
    db, freqs = db[keep], freqs[keep]
    vmax = float(np.percentile(db, 99.95)) if db.size else 0.0
    mesh = ax.pcolormesh(
        times + offset, freqs, db, shading="auto", cmap="magma", vmin=vmax - 90, vmax=vmax, rasterized=True
    )
    ax.set_yscale("log")
    ax.set_ylim(freqs[0], freqs[-1])
    ax.set_ylabel("Hz")
    ax.set_yticks([t for t in (50, 100, 250, 500, 1000, 2000, 4000, 8000, 16000) if t <= freqs[-1]])
    ax.get_yaxis().set_major_formatter(_hz_formatter())
    seconds = mono.shape[0] / sample_rate
    ax.text(
        0.005,
        0.95,
        f"{name}: {seconds:.1f} s at {sample_rate} Hz, placed at {offset:.2f} s",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        color="white",
    )
    cax = ax.inset_axes((1.004, 0.0, 0.008, 1.0))  # outside the axes: the time axis stays aligned
    cbar = ax.figure.colorbar(mesh, cax=cax)
    cbar.set_label("dB", fontsize=8)
    cbar.ax.tick_params(labelsize=7)


def _hz_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")


def _description_lines(records: list[SegmentRecord]) -> list[str]:
    lines = []
    for rec in records:
        st = rec.state
        where = f"{st.scene.biome.replace('_', ' ')}, {_phase(rec)}, {st.weather.state}"
        if rec.combat:
            where += ", combat"
        flags = f"  [{', '.join(rec.fallbacks)}]" if rec.fallbacks else ""
        lines.append(
            f"#{rec.index:<3d} {rec.start:6.1f}–{rec.end:6.1f} s  {rec.trigger:<12} {where:<38} "
            f"{rec.description}{flags}"
        )
    return lines


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    from metabgm_edge.playback.wav import read_wav

    audio, info = read_wav(path)
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    return mono.astype(np.float32, copy=False), info.sample_rate


def write_report(
    log_path: str | Path, out: str | Path, *, audio: str | Path | None = None, session: int | None = None
) -> Path:
    """Render the report PNG for the session log ``log_path`` (and its WAV); return the PNG path."""
    fig, _ = build_figure(log_path, audio=audio, session=session)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    log.debug("wrote %s%s", out, f" (audio {audio})" if audio else "")
    return out


def build_figure(
    log_path: str | Path, *, audio: str | Path | None = None, session: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """The report's matplotlib figure and its panels by name (scene, health, music, latency,
    spectrogram when there is audio, text)."""
    _require_matplotlib()  # before reading anything: say what to install first
    log_path = Path(log_path)
    records = pick_session(load_log(log_path), session, log_path)
    first, last = records[0], records[-1]
    wav: tuple[np.ndarray, int] | None = None
    if audio is not None:
        audio = Path(audio)
        if not audio.is_file():
            raise FileNotFoundError(f"{audio}: no such WAV file (give the --out of the same play run)")
        wav = _read_mono(audio)  # ValueError names the file when it is not a WAV
    # The WAV begins when the first segment was queued (0 in a --fast session).
    offset = first.queued_at if first.join == "start" else 0.0
    x_end = offset + wav[0].shape[0] / wav[1] if wav is not None else max(r.end for r in records)
    x_end = max(x_end, last.end, 1e-3)
    spans = [h for h in heard_spans(records) if h.start < x_end]
    for h in spans:
        h.end = min(h.end, x_end)
    interval = float(np.median([r.end - r.start for r in records if r.trigger == "interval"] or [10.0]))

    lines = _description_lines(records)
    panels = ["scene", "health", "music", "latency"] + (["spectrogram"] if wav is not None else [])
    ratios = {"scene": 1.5, "health": 0.9, "music": 1.5, "latency": 1.5, "spectrogram": 2.2}
    width = 16.0
    text_h = 0.25 + 0.14 * len(lines)
    gaps = 0.45 * len(panels)
    height = sum(ratios[p] for p in panels) + gaps + text_h + 0.7
    fig = _new_figure(width, height, dpi=110)
    grid = fig.add_gridspec(
        len(panels) + 1,
        1,
        height_ratios=[ratios[p] for p in panels] + [text_h],
        hspace=gaps / len(panels) / (sum(ratios[p] for p in panels) / len(panels)),
        top=1 - 0.6 / height,
        bottom=0.05 / height,
        left=0.07,
        right=0.94,
    )
    axes: dict[str, Any] = {}
    for i, name in enumerate(panels):
        axes[name] = fig.add_subplot(grid[i], sharex=axes.get("scene"))
    text_ax = fig.add_subplot(grid[len(panels)])
    text_ax.axis("off")

    misses = sum(r.missed_deadline for r in records)
    fig.text(
        0.07,
        1 - 0.25 / height,
        f"{log_path.name}: {len(records)} segments over {first.start:.0f}–{last.end:.0f} s · "
        f"text: {first.text_backend} · audio: {last.audio_backend} · {misses} deadline misses",
        fontsize=12,
        ha="left",
        va="center",
        weight="bold",
    )

    biome_color = _biome_color([r.state.scene.biome for r in records])
    _bands(
        axes["scene"],
        records,
        [
            ("biome", lambda r: r.state.scene.biome, biome_color),
            ("phase", _phase, lambda v: PHASE_COLORS.get(v, "#dddddd")),
            ("weather", lambda r: r.state.weather.state, lambda v: WEATHER_COLORS.get(v, "#dddddd")),
            ("combat", lambda r: "combat" if r.combat else "", lambda v: "#c0392b" if v else "#f4f4f4"),
        ],
    )
    axes["scene"].set_title(
        "scene over each segment's window (dotted red: a sharp change ended the window)",
        fontsize=9,
        loc="left",
    )

    ax = axes["health"]
    xs = [p for r in records for p in (r.start, r.end)]
    hp = [100 * r.state.health.value / r.state.health.max for r in records for _ in (0, 1)]
    low = [
        100 * float(r.window.get("lowest_health", r.state.health.value)) / r.state.health.max
        for r in records
        for _ in (0, 1)
    ]
    ax.fill_between(xs, low, hp, color="#e74c3c", alpha=0.25, linewidth=0, label="lowest in the window")
    ax.plot(xs, hp, color="#c0392b", linewidth=1.4, label="at the window's end")
    ax.set_ylim(0, 105)
    ax.set_ylabel("health %")
    ax.legend(loc="lower left", fontsize=7, ncol=2, frameon=False)
    ax.set_title("health", fontsize=9, loc="left")

    axes["music"].set_title(
        "music heard: segment, how it joined (start / transition; plain: appended), description",
        fontsize=9,
        loc="left",
    )
    _music_panel(axes["music"], spans, width, x_end)
    summary = _latency_panel(axes["latency"], records, interval)
    trouble = any(r.missed_deadline or r.fallbacks for r in records)
    axes["latency"].set_title(
        f"stage latency per segment (at its window's close) vs the deadline: {summary}",
        fontsize=9, loc="left", color="#c0392b" if trouble else "black",
    )  # fmt: skip
    if wav is not None:
        assert isinstance(audio, Path)
        _spectrogram_panel(axes["spectrogram"], wav[0], wav[1], offset, audio.name)
        axes["spectrogram"].set_title("spectrogram of the session's WAV", fontsize=9, loc="left")
    _mark_changes([axes[p] for p in panels], records)
    for name in panels[:-1]:
        axes[name].tick_params(labelbottom=False)
    axes[panels[-1]].set_xlabel("session time (s)")
    axes["scene"].set_xlim(min(0.0, first.start), x_end)

    text_ax.text(
        0.0,
        1.0,
        "\n".join(["descriptions", *lines]),
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.5,
        transform=text_ax.transAxes,
        linespacing=1.3,
    )
    axes["text"] = text_ax
    return fig, axes
