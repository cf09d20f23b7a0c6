"""The ``metabgm-edge`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import click
import msgspec

from metabgm_edge import __version__
from metabgm_edge.dataset.cli import dataset
from metabgm_edge.errors import MetabgmError
from metabgm_edge.evaluation.cli import eval_command
from metabgm_edge.export.cli import export
from metabgm_edge.state import printable
from metabgm_edge.train.cli import finetune

if TYPE_CHECKING:
    from metabgm_edge.stages import Mode

log = logging.getLogger("metabgm_edge")

ENGINES_DIR: Path | None = None
"""None: where metabgm_edge.paths says (flag, environment, ./engines in a checkout, the user data folder)."""


def _engines() -> Path:
    from metabgm_edge import paths

    return ENGINES_DIR if ENGINES_DIR is not None else paths.engines_dir()


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s"))
    root = logging.getLogger("metabgm_edge")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metabgm-edge")
@click.option("-v", "--verbose", count=True, help="Debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Keep engines/, profiles/, logs/ and recordings/ here [the user data folder; see README].",
)
def main(verbose: int, quiet: bool, data_dir: str | None) -> None:
    """A live, generated soundtrack for games.

    Game state -> characterization (Algorithm 1) -> narrative -> music description -> audio,
    every segment, in real time.
    """
    _setup_logging(verbose, quiet)
    from metabgm_edge import paths

    paths.set_data_dir(data_dir)


main.add_command(export)
main.add_command(dataset)  # the paper's Section III: paired data, fine-tuning, evaluation
main.add_command(finetune)
main.add_command(eval_command, "eval")


def run() -> None:
    """Console entry point: library errors become one clear line (``Error: ...``, as click words
    usage errors) and exit status 2; a file the system refuses (OSError) is named in one line too."""
    try:
        main(standalone_mode=True)
    except MetabgmError as exc:
        click.echo(f"Error: {printable(str(exc))}", err=True)
        sys.exit(2)
    except OSError as exc:
        log.debug("OSError", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"Error: {printable(where + (exc.strerror or str(exc)))}", err=True)
        sys.exit(1)


def _writable(path: str | None, option: str) -> None:
    """Refuse, before anything starts, an output path that cannot be written (one line)."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint=option)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create the folder {parent}: {exc.strerror or exc}", param_hint=option
        ) from None
    existed = target.exists()
    try:
        with target.open("ab"):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror or exc}", param_hint=option) from None
    if not existed:
        target.unlink(missing_ok=True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- schema ---------------------------------------------------------------------------------------


@main.command()
@click.option("--example", is_flag=True, help="Print a complete example message instead.")
def schema(example: bool) -> None:
    """Print the JSON Schema of the live-state protocol (what a game sends)."""
    from metabgm_edge.state import example_message, json_schema

    click.echo(json.dumps(example_message() if example else json_schema(), indent=2))


# -- describe -------------------------------------------------------------------------------------


def open_text(spec: str) -> Any:
    """``auto``: an exported LLM bundle in engines/ if there is one, else the composer rules."""
    from metabgm_edge.text import open_text_backend

    if spec == "auto":
        from metabgm_edge.bundle import default_bundle

        try:
            from metabgm_edge.ort.session import has_gpu_provider
        except ImportError as exc:  # no onnxruntime: no bundle can run
            log.info("text: composer rules (%s)", exc)
            return open_text_backend("composer")
        engines = _engines()
        found = default_bundle(engines, "llm", gpu=has_gpu_provider())
        if found is None:
            log.info("text: composer rules (embedded default; no LLM bundle in %s/)", engines)
            return open_text_backend("composer")
        log.info("text: LLM bundle %s (found in %s/)", found, engines)
        return open_text_backend(str(found))
    return open_text_backend(spec)


def open_audio(spec: str, *, realtime: bool = True) -> Any:
    """``auto``: a MusicGen bundle in engines/ when it renders fast enough here (``realtime``), else the
    synthesizer; says which and why."""
    from metabgm_edge.audio import open_audio_backend

    if spec != "auto":
        return open_audio_backend(spec)
    from metabgm_edge.audio import SPEED_MARGIN
    from metabgm_edge.bundle import default_bundle

    try:
        from metabgm_edge.ort.session import has_gpu_provider
    except ImportError as exc:  # no onnxruntime: no bundle can run
        log.info("audio: the embedded synthesizer (%s)", exc)
        return open_audio_backend("synth")
    engines = _engines()
    found = default_bundle(engines, "musicgen", gpu=has_gpu_provider())
    if found is None:
        log.info("audio: the embedded synthesizer (no MusicGen bundle in %s/)", engines)
        return open_audio_backend("synth")
    backend = open_audio_backend(str(found))
    if not realtime:
        log.info("audio: %s (found in %s/)", backend.name, engines)
        return backend
    speed = backend.realtime_factor()
    if speed >= SPEED_MARGIN:
        what = "audio: %s (found in %s/; renders %.1f s of audio per second here)"
        log.info(what, backend.name, engines, speed)
        return backend
    log.warning(
        "audio: the embedded synthesizer: %s renders only %.2f s of audio per second here (it needs %.2f "
        "to keep up); name it with --audio %s to play it anyway (with --if-slow queue)",
        backend.name, speed, SPEED_MARGIN, found,
    )  # fmt: skip
    return open_audio_backend("synth")


INTERVAL = click.FloatRange(2.0, 60.0)
POSITIVE = click.FloatRange(min=0.0, min_open=True)
PROFILE_HELP = "Listener profile (TOML or JSON): preferred/avoided genres and instruments, intensity."
TEXT_HELP = (
    "Text backend: auto (an LLM bundle in engines/, else composer), composer, a bundle folder, "
    "or an OpenAI-compatible server: http://HOST:PORT/v1[?model=NAME], openai:MODEL."
)
AUDIO_HELP = (
    "Audio backend: auto (a MusicGen bundle in engines/ that keeps up here, else synth), synth, or a "
    "MusicGen bundle folder."
)
MODE_HELP = "two-stage: narrative, then description (the paper's method); direct: the description at once."
SEED_HELP = "Seed for the simulator, the text backend and the music (the same seed plays the same)."


@main.command()
@click.argument("scene", required=False, type=click.File("rb"))
@click.option(
    "--source", help="Run the acquisition path on a source instead (sim:tour, replay:F, udp://...)."
)
@click.option(
    "--segments",
    default=6,
    show_default=True,
    type=click.IntRange(min=1),
    help="With --source: how many segments.",
)
@click.option(
    "--interval", default=10.0, show_default=True, type=INTERVAL, help="With --source: segment length (s)."
)
@click.option("--mode", type=click.Choice(["two-stage", "direct"]), default="two-stage", show_default=True,
              help=MODE_HELP)  # fmt: skip
@click.option("--text", "text_spec", default="auto", show_default=True, help=TEXT_HELP)
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), help=PROFILE_HELP)
@click.option("--seed", default=0, show_default=True, help="Seed for the simulator and the text backend.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (one object per segment with --source).")
def describe(
    scene: Any,
    source: str | None,
    segments: int,
    interval: float,
    mode: str,
    text_spec: str,
    profile_path: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Turn a game state into a narrative and a music description.

    SCENE is a JSON file in the live-state protocol (``-`` reads stdin); see ``metabgm-edge schema``.
    """
    from metabgm_edge.listener_profile import load_profile
    from metabgm_edge.stages import describe as run_describe
    from metabgm_edge.state import parse_message

    ctx = click.get_current_context()
    if source is not None and scene is not None:
        raise click.UsageError("give either a SCENE.json file or --source, not both")
    if source is None:
        given = [f"--{n}" for n in ("segments", "interval") if ctx.get_parameter_source(n).name != "DEFAULT"]
        if given:
            raise click.UsageError(f"{' and '.join(given)} only apply with --source")
    stage_mode = cast("Mode", mode)
    profile = load_profile(profile_path)
    if source is None and scene is None:
        raise click.UsageError("give a SCENE.json file, '-' for stdin, or --source")
    backend = open_text(text_spec)
    if source is None:
        state, _ = parse_message(scene.read())
        result = run_describe(state, backend, mode=stage_mode, profile=profile, seed=seed)
        if as_json:
            click.echo(msgspec.json.encode(result).decode())
            return
        click.echo("characterized:")
        for line in result.info_str.splitlines():
            click.echo(f"  {printable(line)}")
        if result.narrative is not None:
            click.echo(f"narrative ({result.timings['narrative']:.3f} s):\n  {printable(result.narrative)}")
        step = "description" if mode == "two-stage" else "direct"
        click.echo(f"description ({result.timings[step]:.3f} s):\n  {printable(result.description)}")
        return

    from metabgm_edge.acquisition import Acquisition, FastClock, RealClock
    from metabgm_edge.sources import open_source

    src = open_source(source, seed=seed)
    clock = RealClock() if src.live else FastClock()
    acq = Acquisition(src, interval=interval, clock=clock)
    acq.start()
    try:
        for _ in range(segments):
            seg = acq.next_segment()
            if seg is None:
                break
            result = run_describe(seg, backend, mode=stage_mode, profile=profile, seed=seed + seg.index)
            if as_json:
                line = {"segment": seg.index, "start": seg.start, "end": seg.end, "trigger": seg.trigger}
                click.echo(json.dumps({**line, **msgspec.to_builtins(result)}))
                continue
            where = _scene_words(seg.latest, seg.combat)
            times = ", ".join(f"{k} {v:.3f} s" for k, v in result.timings.items() if k != "characterize")
            click.echo(
                f"[{seg.index:3d}] {seg.start:6.1f}-{seg.end:6.1f} s {seg.trigger:<12} {where:<36} "
                f"| {printable(result.description)} ({times})"
            )
    finally:
        acq.stop()


# -- play -----------------------------------------------------------------------------------------


def _scene_words(state: Any, combat: bool) -> str:
    """ "forest, night, rain, combat", "dripstone_caves, underground", "nether_wastes, the nether":
    one segment's scene in a line of output (strings from the game made printable)."""
    from metabgm_edge.characterize import scene_words

    return printable(", ".join(scene_words(state, combat)))


def _print_segment(rec: Any) -> None:
    where = _scene_words(rec.state, rec.combat)
    flags = f" [{', '.join(rec.fallbacks)}]" if rec.fallbacks else ""
    late = " LATE" if rec.missed_deadline else ""
    heard = f", heard at {rec.audible_at:.1f} s" if rec.audible_at is not None else ""
    lag = f", {rec.lag:.1f} s after the change" if rec.lag is not None else ""
    click.echo(
        f"[{rec.index:3d}] {rec.end:7.1f} s {rec.trigger:<12} {where:<34} | {printable(rec.description)} "
        f"({rec.timings['total']:.2f} s, {rec.join}{heard}{lag}){late}{flags}"
    )


@main.command()
@click.option(
    "--source",
    default="sim:tour",
    show_default=True,
    help="sim:NAME, replay:F.jsonl, udp://HOST:PORT, ws://HOST:PORT or minecraft://HOST:PORT.",
)
@click.option("--interval", default=10.0, show_default=True, type=INTERVAL, help="Segment length in seconds.")
@click.option("--duration", type=POSITIVE, help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write exactly what plays to this WAV.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Session log (JSONL).")
@click.option("--seed", default=0, show_default=True, help=SEED_HELP)
@click.option("--fast", is_flag=True, help="No device: render faster than real time into --out.")
@click.option("--text", "text_spec", default="auto", show_default=True, help=TEXT_HELP)
@click.option("--audio", "audio_spec", default="auto", show_default=True, help=AUDIO_HELP)
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), help=PROFILE_HELP)
@click.option("--mode", type=click.Choice(["two-stage", "direct"]), default="two-stage", show_default=True,
              help=MODE_HELP)  # fmt: skip
@click.option(
    "--deadline",
    type=click.FloatRange(0.5, 120.0),
    help="Seconds a segment's text and audio may take before the fallbacks take over [interval].",
)
@click.option(
    "--crossfade",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.05, 2.0),
    help="Crossfade at joins and transitions (s).",
)
@click.option(
    "--sample-period",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 60.0),
    help="How often the state is sampled (s); at most the interval.",
)
@click.option(
    "--transitions/--no-transitions",
    default=True,
    show_default=True,
    help="Start a new segment at once on a sharp scene change (combat, dimension, low health).",
)
@click.option("--device", help="Output device (name or index; see `metabgm-edge doctor`).")
@click.option(
    "--if-slow",
    "if_slow",
    type=click.Choice(["synth", "queue"]),
    default="synth",
    show_default=True,
    help="When the audio backend cannot keep up here (MusicGen on a CPU): let the synthesizer play, "
    "or queue its segments and hear them later than the game.",
)
def play(
    source: str,
    interval: float,
    duration: float | None,
    out: str | None,
    log_path: str | None,
    seed: int,
    fast: bool,
    text_spec: str,
    audio_spec: str,
    profile_path: str | None,
    mode: str,
    deadline: float | None,
    crossfade: float,
    sample_period: float,
    transitions: bool,
    device: str | None,
    if_slow: str,
) -> None:
    """Play a live soundtrack for the game state from --source (Ctrl-C stops; the WAV and log
    stay valid).

    With nothing configured: the simulated tour, the composer rules and the embedded synthesizer,
    on the default output device; on a machine without one, into --out or metabgm-edge-TIME.wav in
    the recordings folder (see `metabgm-edge doctor`).
    """
    from metabgm_edge import paths
    from metabgm_edge.listener_profile import load_profile
    from metabgm_edge.scheduler import PlayOptions, Session
    from metabgm_edge.sources import open_source

    if sample_period > interval:
        raise click.BadParameter(
            f"{sample_period:g} s is longer than the interval ({interval:g} s)", param_hint="--sample-period"
        )
    if fast and device is not None:
        raise click.UsageError("--fast plays on no device; drop --device")
    _writable(out, "--out")
    _writable(log_path, "--log")
    src = open_source(source, seed=seed)
    if fast and src.live:
        raise click.UsageError(f"--fast needs a simulated or replayed source; {source} is live")
    if fast and duration is None and source.startswith("sim:"):
        raise click.UsageError("--fast with a simulated source needs --duration (it never ends)")
    if fast and out is None:
        log.warning("--fast without --out: the audio is rendered and discarded (use it to time the pipeline)")
    if not fast:
        from metabgm_edge.playback.sinks import probe_output

        reason = probe_output(_device(device))
        if reason is not None and device is not None:
            raise click.BadParameter(
                f"{reason}; `metabgm-edge doctor` lists the devices", param_hint="--device"
            )
        if reason is not None and out is None:
            # No speakers: keep the music anyway, in a file to play later (the sink says so, once).
            out = str(paths.default_file("recordings", "metabgm-edge", ".wav"))
    if log_path is None and paths.frozen():  # the packaged build keeps a session log for bug reports
        try:
            log_path = str(paths.default_file("logs", "session", ".jsonl"))
        except MetabgmError as exc:
            log.warning("no session log: %s", exc)
    options = PlayOptions(
        interval=interval, sample_period=sample_period, deadline=deadline, crossfade=crossfade,
        mode=cast("Mode", mode), seed=seed, transitions=transitions, fast=fast, duration=duration,
        if_slow=cast("Literal['synth', 'queue']", if_slow),
    )  # fmt: skip
    session = Session(
        src, open_text(text_spec), open_audio(audio_spec, realtime=not fast), options=options,
        profile=load_profile(profile_path), out=out, log_path=log_path, device=_device(device),
    )  # fmt: skip
    session.on_segment = _print_segment
    if hasattr(src, "listen_address"):
        host, port = src.listen_address
        click.echo(f"Minecraft: join {host}:{port} (Multiplayer > Direct Connection) to play with music")
    stats = session.run()
    fb = ", ".join(f"{k} {v}" for k, v in sorted(stats.fallbacks.items())) or "none"
    rejected = sum(stats.rejected.values())
    rej = ""
    if stats.received or rejected:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.rejected.items())) or "none"
        rej = f"; {_plural(stats.received, 'message')} received, {rejected} rejected ({reasons})"
    click.echo(
        f"played {stats.seconds:.1f} s in {_plural(stats.segments, 'segment')} on {stats.sink}: "
        f"{_plural(stats.deadline_misses, 'deadline miss').replace('misss', 'misses')}, fallbacks: {fb}, "
        f"{_plural(stats.underruns, 'underrun')}, {_plural(stats.starvations, 'starvation')}{rej}"
        + (f"; wrote {out}" if out else "")
    )


def _device(spec: str | None) -> int | str | None:
    if spec is None:
        return None
    return int(spec) if spec.isdigit() else spec


# -- render ---------------------------------------------------------------------------------------


@main.command()
@click.argument("description")
@click.option(
    "--duration", "--seconds", "seconds", default=10.0, show_default=True, type=click.FloatRange(0.5, 120.0),
    help="Length of the audio in seconds (0.5-120).",
)  # fmt: skip
@click.option("--audio", "audio_spec", default="auto", show_default=True, help=AUDIO_HELP)
@click.option(
    "--continue-from",
    "previous",
    type=click.Path(exists=True, dir_okay=False),
    help="A WAV written by `render` or `play --out`: continue its music (its melodic anchor).",
)
@click.option("--seed", default=0, show_default=True, help=SEED_HELP)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="WAV file to write.")
def render(
    description: str, seconds: float, audio_spec: str, previous: str | None, seed: int, out: str
) -> None:
    """Render one DESCRIPTION to audio: previews for sound designers, tests for audio backends.

    The WAV carries the melodic anchor, so `--continue-from` can chain previews.
    """
    from metabgm_edge.audio import AudioRequest, anchor_to_metadata, continue_from
    from metabgm_edge.audio import render as render_audio
    from metabgm_edge.playback.wav import read_wav, write_wav

    if not description.strip():
        raise click.BadParameter(
            "the description is empty; say what the music should be", param_hint="DESCRIPTION"
        )
    _writable(out, "--out")
    backend = open_audio(audio_spec, realtime=False)
    anchor = context = None
    if previous is not None:
        try:
            recorded, info = read_wav(previous)
            anchor, context = continue_from(backend, info.metadata, recorded, info.sample_rate)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--continue-from") from None
    t0 = time.perf_counter()
    request = AudioRequest(
        description=description, seconds=seconds, seed=seed, anchor=anchor, context=context
    )
    audio, next_anchor = render_audio(backend, request)
    took = time.perf_counter() - t0
    try:
        write_wav(
            out, audio, backend.sample_rate, metadata=anchor_to_metadata(next_anchor) if next_anchor else None
        )
    except OSError as exc:
        raise MetabgmError(f"cannot write {out}: {exc.strerror or exc}") from None
    summary = f"; next: {next_anchor.summary()}" if next_anchor is not None else ""
    click.echo(
        f"wrote {out}: {audio.shape[0] / backend.sample_rate:.1f} s in {took:.2f} s "
        f"with {backend.name}{summary}"
    )


# -- record ---------------------------------------------------------------------------------------


@main.command()
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write.")
@click.option("--duration", type=POSITIVE, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--sample-period", default=1.0, show_default=True, type=click.FloatRange(0.05, 60.0),
              help="How often the state is sampled (s).")  # fmt: skip
@click.option("--seed", default=0, show_default=True, help=SEED_HELP)
def record(source: str, out: str, duration: float | None, sample_period: float, seed: int) -> None:
    """Record SOURCE into a file that `--source replay:FILE` plays back."""
    import threading

    from metabgm_edge.acquisition import FastClock, RealClock
    from metabgm_edge.sources import open_source
    from metabgm_edge.state import SceneState

    _writable(out, "--out")
    src = open_source(source, seed=seed)
    if not src.live and duration is None:
        raise click.UsageError(f"{source} is simulated or replayed: give --duration")
    clock = RealClock() if src.live else FastClock()
    stop = threading.Event()
    enc = msgspec.json.Encoder()
    n, last = 0, None
    src.start()
    try:
        with open(out, "w", encoding="utf-8") as fh:
            t = 0.0
            while duration is None or t <= duration:
                clock.sleep_until(t, stop)
                state: SceneState | None = src.sample(clock.now())
                if state is not None and state is not last:
                    line = {"t": round(clock.now(), 3), **msgspec.to_builtins(state)}
                    fh.write(enc.encode(line).decode() + "\n")
                    fh.flush()
                    n, last = n + 1, state
                if src.finished:
                    break
                t += sample_period
    except KeyboardInterrupt:
        pass
    finally:
        src.close()
    click.echo(f"recorded {_plural(n, 'state')} to {out}")


# -- report, bench, doctor ------------------------------------------------------------------------


@main.command()
@click.argument("log_file", metavar="LOG.jsonl", type=click.Path(exists=True, dir_okay=False))
@click.option("--audio", "audio_path", type=click.Path(dir_okay=False), help="The WAV of the same run.")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write [LOG with .png].")
@click.option("--session", type=int, help="Which session of an appended log (1 = first) [the last].")
def report(log_file: str, audio_path: str | None, out: str | None, session: int | None) -> None:
    """Draw a session log (and its WAV) as a PNG: the scene over time, the descriptions, the
    stage latencies against the deadline, and a spectrogram on the same time axis."""
    from metabgm_edge.report import write_report

    target = Path(out) if out else Path(log_file).with_suffix(".png")
    try:
        written = write_report(log_file, target, audio=audio_path, session=session)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {written}")


@main.group(invoke_without_command=True)
@click.option("--segments", default=12, show_default=True, help="Segments in the fast (throughput) run.")
@click.option("--interval", default=10.0, show_default=True, type=INTERVAL, help="Segment length in seconds.")
@click.option("--source", default="sim:tour", show_default=True, help="sim:NAME or replay:F.jsonl.")
@click.option("--text", "text_spec", default="auto", show_default=True, help=TEXT_HELP)
@click.option("--audio", "audio_spec", default="auto", show_default=True, help=AUDIO_HELP)
@click.option("--seed", default=0, show_default=True, help=SEED_HELP)
@click.option(
    "--latency/--no-latency",
    default=True,
    show_default=True,
    help="Also measure scene change to audible for scripted sharp and gradual changes (a real-time run "
    "of about 10 s per change).",
)
@click.option(
    "--changes",
    type=click.IntRange(1, 100),
    help="How many scripted changes the real-time run goes through [10: 6 gradual, 4 sharp].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the result as JSON to this file.")
def bench(
    segments: int,
    interval: float,
    source: str,
    text_spec: str,
    audio_spec: str,
    seed: int,
    latency: bool,
    changes: int | None,
    as_json: bool,
    out: str | None,
) -> None:
    """Measure the pipeline here: per-stage p50/p95, real-time factor, underruns, scene-change-to-
    audible latency, peak RSS (see README, "Measuring: bench"). `bench serve` measures `serve`."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    from metabgm_edge.bench import format_table, run_bench
    from metabgm_edge.sources import open_source

    if segments < 1:
        raise click.BadParameter("must be at least 1", param_hint="--segments")
    src = open_source(source, seed=seed)
    if src.live:
        raise click.UsageError(f"bench runs faster than real time: {source} is live; use sim: or replay:")
    try:
        result = run_bench(src, open_text(text_spec), open_audio(audio_spec), segments=segments,
                           interval=interval, seed=seed, latency=latency, changes=changes)  # fmt: skip
    except ValueError as exc:  # an interval out of range, ...
        raise click.ClickException(str(exc)) from None
    encoded = msgspec.json.format(msgspec.json.encode(result), indent=2).decode()
    if out:
        try:
            Path(out).write_text(encoded + "\n", encoding="utf-8")
        except OSError as exc:
            raise MetabgmError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(encoded if as_json else format_table(result))


@main.command()
@click.option(
    "--engines",
    "engines_dir",
    type=click.Path(file_okay=False),
    help="Where exported bundles are looked for [see README: where things live].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(engines_dir: str | None, as_json: bool) -> None:
    """Check this machine: audio devices, onnxruntime providers (really tried), TensorRT, GPU,
    engines found, Python and package versions. Always exits 0; each line says ok/missing/error."""
    from metabgm_edge.doctor import format_checks, run_checks

    checks = run_checks(engines_dir or _engines())
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(checks), indent=2).decode())
    else:
        click.echo(format_checks(checks))


# -- serve, listen, bench serve ---------------------------------------------------------------------


def _need_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve as _  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"serve needs Ray Serve ({exc}): pip install 'metabgm-edge[serve]'"
        ) from None


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="A Ray Serve config file (replicas, CPUs and GPUs per replica, args) [the bundled serve.yaml].",
)
@click.option(
    "--address", help="Join this Ray cluster (HEAD:6379, or ray://HEAD:10001) instead of a local Ray."
)
@click.option(
    "--source", help="Where every player's game sends its states: udp://...|ws://...|minecraft://..."
)
@click.option("--audio-listen", help="HOST:PORT where players connect for their music [127.0.0.1:8765].")
@click.option("--num-cpus", type=click.IntRange(1, 4096), help="A local Ray's CPUs [all of this machine's].")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True, help="A local Ray's dashboard.")
@click.option("--status-every", default=10.0, show_default=True, type=click.FloatRange(1.0, 3600.0),
              help="Seconds between status blocks (one line per player).")  # fmt: skip
@click.option("--duration", type=POSITIVE, help="Stop after this many seconds (default: Ctrl-C).")
def serve(
    config_path: str | None,
    address: str | None,
    source: str | None,
    audio_listen: str | None,
    num_cpus: int | None,
    dashboard: bool,
    status_every: float,
    duration: float | None,
) -> None:
    """Serve many players: one session per player, the text and audio models shared (Ray Serve).

    Every game sends its states with its "player" id to --source; each player listens with
    `metabgm-edge listen ws://HOST:PORT/PLAYER --token T` (printed when the player joins).
    """
    _need_ray()
    from metabgm_edge.serve import runner

    config = runner.load_config(config_path, source=source, audio_listen=audio_listen)
    args = config["applications"][0]["args"]
    info = runner.start_ray(address, num_cpus=num_cpus, dashboard=dashboard)
    try:
        click.echo(
            f"{info['what']}" + (f"; Ray dashboard: http://{info['dashboard']}" if info["dashboard"] else "")
        )
        handle = runner.deploy(config)
        click.echo(f"serving: players send to {args['source']}, listen at ws://{args['audio_listen']}/PLAYER "
                   f"(text {args.get('text', 'composer')}, audio {args.get('audio', 'synth')}); "
                   "Ctrl-C stops")  # fmt: skip
        runner.watch(handle, every=status_every, duration=duration, echo=click.echo)
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        runner.shutdown(local=address is None)


@main.command()
@click.argument("url", metavar="ws://HOST:PORT/PLAYER")
@click.option("--token", help="The player's token (printed by serve when the player joins).")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write exactly what plays to this WAV.")
@click.option("--duration", type=POSITIVE, help="Stop after this many seconds of playback (default: Ctrl-C).")
@click.option("--device", help="Output device (name or index; see `metabgm-edge doctor`).")
@click.option("--format", "fmt", type=click.Choice(["opus", "flac", "pcm16"]),
              help="Ask the server for this format [opus when PyAV is installed, else pcm16].")  # fmt: skip
@click.option("--buffer", default=0.4, show_default=True, type=click.FloatRange(0.05, 10.0),
              help="Seconds buffered before playback starts and after a network stall (jitter).")  # fmt: skip
def listen(
    url: str, token: str | None, out: str | None, duration: float | None, device: str | None, fmt: str | None,
    buffer: float,
) -> None:  # fmt: skip
    """Play one player's music from `metabgm-edge serve` (reconnects when the connection drops)."""
    from metabgm_edge.playback.sinks import probe_output
    from metabgm_edge.serve.listen import ListenClient

    if out is None and probe_output(_device(device)) is not None:
        out = time.strftime("metabgm-edge-listen-%Y%m%d-%H%M%S.wav")
    client = ListenClient(url, token=token, out=out, duration=duration, device=_device(device), fmt=fmt,
                          buffer=buffer, max_buffer=max(2.0, 4 * buffer))  # fmt: skip

    def heard(h: Any) -> None:
        i = h.info
        flags = f" [{', '.join(i.get('fallbacks') or [])}]" if i.get("fallbacks") else ""
        where = f"{i.get('trigger', ''):<12} {i.get('scene', ''):<34}"
        click.echo(f"[{h.at:7.1f} s] {where} | {i.get('description', '')}"
                   f"{flags}")  # fmt: skip

    client.on_segment = heard
    stats = client.run()
    kbits = stats.bytes / max(stats.seconds, 1e-9) / 125
    skipped = stats.lost_frames / 32000
    click.echo(
        f"listened {stats.seconds:.1f} s ({stats.format}, {kbits:.0f} kbit/s) "
        f"on {stats.sink}: {len(stats.segments)} segments, {stats.reconnects} reconnects, "
        f"{stats.underrun_seconds:.2f} s of silence from the network, {skipped:.2f} s skipped"
        + (f"; wrote {out}" if out else "")
    )


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 points at stderr inside (native code's prints too), then back."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@bench.command("serve")
@click.option(
    "--players", default="1,2,4,8", show_default=True, help="Player counts to run, e.g. 1,2,4,8,16."
)
@click.option("--duration", default=60.0, show_default=True, type=POSITIVE, help="Seconds per player count.")
@click.option("--text", "text_spec", default="composer", show_default=True, help="composer or an LLM bundle.")
@click.option("--audio", "audio_spec", default="synth", show_default=True, help="synth or a MusicGen bundle.")
@click.option("--batching", type=click.Choice(["on", "off", "both"]), default="on", show_default=True,
              help="Batch the shared deployments across players (max_batch_size 1 when off).")  # fmt: skip
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="A Ray Serve config."
)
@click.option("--interval", default=10.0, show_default=True, type=INTERVAL, help="Segment length in seconds.")
@click.option("--format", "fmt", type=click.Choice(["opus", "flac", "pcm16"]), default="opus",
              show_default=True, help="The audio format the listen clients ask for.")  # fmt: skip
@click.option("--stop-at-miss/--all", default=True, show_default=True,
              help="Stop growing N after the first player count with a deadline miss.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the result as JSON to this file.")
def bench_serve(
    players: str, duration: float, text_spec: str, audio_spec: str, batching: str, config_path: str | None,
    interval: float, fmt: str, stop_at_miss: bool, as_json: bool, out: str | None,
) -> None:  # fmt: skip
    """Measure `serve` here: Ray, serve, N simulated players (each its own scene) and N listen
    clients, per N: deadline misses, audio continuity per player, latency, memory."""
    _need_ray()
    from metabgm_edge.serve.bench import format_serve_table, run_serve_bench

    try:
        counts = sorted({int(n) for n in players.split(",") if n.strip()})
    except ValueError:
        raise click.BadParameter(
            "a comma-separated list of player counts, e.g. 1,2,4", param_hint="--players"
        ) from None
    if not counts or counts[0] < 1 or counts[-1] > 256:
        raise click.BadParameter("player counts from 1 to 256", param_hint="--players")
    # With --json, stdout carries the JSON alone: the progress lines, and whatever Ray prints to
    # file descriptor 1 while it runs and shuts down, go to stderr.
    with _stdout_to_stderr() if as_json else contextlib.nullcontext():
        result = run_serve_bench(counts, duration=duration, text=text_spec, audio=audio_spec,
                                 batching=batching, config_path=config_path, interval=interval, fmt=fmt,
                                 stop_at_miss=stop_at_miss,
                                 echo=lambda line: click.echo(line, err=as_json))  # fmt: skip
    encoded = msgspec.json.format(msgspec.json.encode(result), indent=2).decode()
    if out:
        Path(out).write_text(encoded + "\n", encoding="utf-8")
    click.echo(encoded if as_json else format_serve_table(result))
