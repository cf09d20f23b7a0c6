"""What ``metabgm-edge serve`` does: Ray (local, or a cluster by address), the config, the status.

The config is a Ray Serve config file, validated by Ray's own schema (``ServeDeploySchema``) and
deployed the way ``serve run CONFIG.yaml`` deploys one; the ``metabgm_edge.serve.app:build``
application's ``args`` get ``--source`` / ``--audio-listen`` from the command line, bundle paths
made absolute (replicas do not share the shell's working directory), and a random
``audio_secret`` when the file has none.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from metabgm_edge.errors import MetabgmError

log = logging.getLogger(__name__)

DEFAULT_CONFIG: Final = Path(__file__).with_name("serve.yaml")
APP_IMPORT: Final = "metabgm_edge.serve.app:build"
LOCAL_OBJECT_STORE_MB: Final = 256


class ServeError(MetabgmError):
    pass


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    source: str | None = None,
    audio_listen: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config file (the bundled default when None) as a dict Ray's schema accepts."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    file = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServeError(f"cannot read the config {file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ServeError(f"{file} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ServeError(f"{file}: a Ray Serve config is a mapping with 'applications:'")
    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as exc:  # pydantic's ValidationError: keep the first lines
        lines = str(exc).splitlines()
        raise ServeError(f"{file} is not a valid Ray Serve config: {' '.join(lines[:3])}") from None
    apps = [a for a in raw["applications"] if a.get("import_path") == APP_IMPORT]
    if len(apps) != 1:
        raise ServeError(f"{file}: expected one application with import_path: {APP_IMPORT}")
    app = apps[0]
    args = dict(app.get("args") or {})
    if source is not None:
        args["source"] = source
    if audio_listen is not None:
        args["audio_listen"] = audio_listen
    args.update(overrides or {})
    for key in ("text", "audio", "profile"):
        value = args.get(key)
        if isinstance(value, str) and value not in ("composer", "synth", "auto", ""):
            candidate = Path(value).expanduser()
            if not candidate.is_absolute():
                here = Path.cwd() / candidate
                candidate = here if here.exists() else file.parent / candidate
            if not candidate.exists():
                raise ServeError(f"{file}: args.{key}={value!r} is neither built in nor an existing path")
            args[key] = str(candidate.resolve())
    if not args.get("audio_secret"):
        args["audio_secret"] = secrets.token_urlsafe(24)
    from metabgm_edge.serve.options import ServeArgs

    ServeArgs.from_dict(args).listen_address()  # refuse a bad argument here, not in a replica
    app["args"] = args
    app.setdefault("name", "metabgm")
    return raw


def start_ray(address: str | None, *, num_cpus: int | None = None, dashboard: bool = True,
              object_store_mb: int = LOCAL_OBJECT_STORE_MB) -> dict[str, Any]:  # fmt: skip
    """Join the cluster at ``address``, or start a local Ray; returns what it said."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        context = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        what = f"joined the Ray cluster at {address}"
    else:
        context = ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_mb * 1024 * 1024,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        what = "started a local Ray"
    info = {"what": what, "dashboard": getattr(context, "dashboard_url", None) or None}
    log.info("%s%s", what, f"; dashboard http://{info['dashboard']}" if info["dashboard"] else "")
    return info


def deploy(config: dict[str, Any], *, timeout: float = 600.0) -> Any:
    """Deploy the config (as ``serve run CONFIG.yaml`` does) and wait until it runs; the app handle."""
    from ray import serve
    from ray.serve._private import api as _private_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = _private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        controller_options=schema.controller_options,
    )
    client.deploy_apps(schema, _blocking=False)
    name = schema.applications[0].name
    deadline = time.monotonic() + timeout
    while True:
        app = serve.status().applications.get(name)
        state = str(getattr(app, "status", "")).split(".")[-1]
        if state == "RUNNING":
            return serve.get_app_handle(name)
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            message = getattr(app, "message", "") or ""
            raise ServeError(
                f"the application failed to deploy: {message.strip().splitlines()[-1:] or state}"
            )
        if time.monotonic() > deadline:
            raise ServeError(f"the application was not running after {timeout:.0f} s ({state})")
        time.sleep(0.5)


def reconfigure(config: dict[str, Any], deployment: str, user_config: dict[str, Any]) -> None:
    """Change one deployment's ``user_config`` in place (its replicas' ``reconfigure``; no restart)."""
    for app in config["applications"]:
        for dep in app.setdefault("deployments", []):
            if dep.get("name") == deployment:
                dep["user_config"] = {**(dep.get("user_config") or {}), **user_config}
    deploy(config)


def status(handle: Any, timeout: float = 30.0) -> dict[str, Any]:
    result: dict[str, Any] = handle.status.remote().result(timeout_s=timeout)
    return result


def shutdown(local: bool) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        if local:
            ray.shutdown()


def watch(handle: Any, *, every: float = 10.0, duration: float | None = None,
          echo: Callable[[str], None] = print) -> None:  # fmt: skip
    """Print new players (with their listen command) and, every ``every`` s, one line per player."""
    import msgspec

    from metabgm_edge.serve.host import PlayerStatus, status_line

    announced: set[str] = set()
    started = time.monotonic()
    last = 0.0
    while duration is None or time.monotonic() - started < duration:
        try:
            st = status(handle)
        except Exception as exc:  # the Players replica restarting: say so, keep watching
            echo(f"status unavailable ({type(exc).__name__}); Ray restarts a failed replica")
            time.sleep(every)
            continue
        if "error" in st:
            raise ServeError(f"the Players deployment failed: {st['error']}")
        url = st["audio_url"].rsplit("/", 1)[0]
        present = {p["player"] for p in st["players"]}
        for p in st["players"]:
            if p["player"] not in announced:
                announced.add(p["player"])
                echo(f"player {p['player']} joined: metabgm-edge listen {url}/{p['player']} "
                     f"--token {st['tokens'][p['player']]}")  # fmt: skip
        for player in sorted(announced - present):
            announced.discard(player)
            echo(f"player {player} left (not heard from for {st.get('forget_s', 0):.0f} s): session ended")
        now = time.monotonic()
        if now - last >= every:
            last = now
            echo(f"-- {len(st['players'])} players, {st['segments']} segments, {st['deadline_misses']} "
                 f"deadline misses, {st['audio_connections']} listening, {st['forgotten']} left")  # fmt: skip
            for p in st["players"]:
                echo("   " + status_line(msgspec.convert(p, PlayerStatus)))
            try:
                echo("   " + backends_line(handle.backends.remote().result(timeout_s=30.0)))
            except Exception as exc:  # a replica restarting
                echo(f"   backends unavailable ({type(exc).__name__}); Ray restarts a failed replica")
        time.sleep(1.0)


def batch_summary(sizes: list[int]) -> str:
    """``12 calls (3 batched), sizes 1x9 2x3``: a replica's calls by batch size."""
    counts: dict[int, int] = {}
    for n in sizes:
        counts[n] = counts.get(n, 0) + 1
    batched = sum(c for n, c in counts.items() if n > 1)
    by_size = " ".join(f"{n}x{c}" for n, c in sorted(counts.items())) or "-"
    return f"{len(sizes)} calls ({batched} batched), sizes {by_size}"


def backends_line(info: dict[str, Any]) -> str:
    """One line for the shared deployments: each replica's backend, its calls by batch size."""
    parts = []
    for role in ("text", "audio"):
        i = info[role]
        where = f"{role} {i['name']} (max batch {i['max_batch_size']}, in flight {i.get('in_flight', 0)})"
        parts.append(f"{where}: {batch_summary(i['batch_sizes'])}")
    return "; ".join(parts)
