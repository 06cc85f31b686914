"""Operator commands: status, topics scale, healthcheck, lag-exporter, replay, replay-worker, shadow, compare."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from radstream.cli.context import settings
from radstream.settings import Settings


def status(
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="only these consumer groups")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    all_topics: Annotated[bool, typer.Option("--all-topics", help="also topics outside this prefix")] = False,
) -> None:
    """Consumer groups: state, members and lag per partition."""
    from radstream.ops.status import group_status

    groups = group_status(settings(), group or None, all_topics=all_topics)
    if as_json:
        typer.echo(json.dumps([
            {"group": g.group_id, "state": g.state, "total_lag": g.total_lag,
             "members": [{"client_id": m.client_id, "host": m.host, "partitions": m.partitions} for m in g.members],
             "partitions": [{"topic": p.topic, "partition": p.partition, "committed": p.committed, "end": p.end,
                             "lag": p.lag, "member": p.member} for p in g.partitions]}
            for g in groups], indent=2))
        return
    if not groups:
        typer.echo("no consumer groups on radstream topics")
    for g in groups:
        typer.echo(f"{g.group_id}  state={g.state}  members={len(g.members)}  lag={g.total_lag}")
        for m in g.members:
            parts = ", ".join(f"{t.rsplit('.', 1)[-1]}[{p}]" for t, p in m.partitions) or "-"
            typer.echo(f"  member {m.client_id} {m.host}: {parts}")
        for p in g.partitions:
            committed = "-" if p.committed is None else str(p.committed)
            typer.echo(f"  {p.topic:<44} {p.partition:>3}  committed={committed:<8} end={p.end:<8} "
                       f"lag={p.lag:<6} {p.member or ''}")


def lag_exporter(
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="only these consumer groups")] = None,
) -> None:
    """Serve consumer-group lag (radstream_consumer_group_lag) on the observability port `lag_exporter`."""
    import signal
    import threading

    from radstream.observability import Observability, kafka_ready
    from radstream.ops.lag_exporter import GroupLagCollector

    s = settings()
    obs = Observability.for_component(s, "lag_exporter")
    obs.registry.register(GroupLagCollector(s, group or None))
    obs.add_readiness_check("kafka", kafka_ready(s))
    if obs.start() == 0:
        typer.echo("observability port for lag_exporter is off or busy", err=True)
        raise typer.Exit(2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"lag exporter on http://{obs.address}:{obs.bound_port}/metrics")
    while not stop.wait(5.0):
        obs.beat()
    obs.stop()


def healthcheck(
    component: Annotated[str, typer.Argument(help="process whose endpoint to ask (observability.ports key)")],
    ready: Annotated[bool, typer.Option("--ready", help="ask /readyz instead of /healthz")] = False,
    url: Annotated[str | None, typer.Option("--url", help="ask this URL instead")] = None,
    timeout: Annotated[float, typer.Option(help="seconds")] = 3.0,
) -> None:
    """Exit 0 when the process's health endpoint answers 200 (container and Kubernetes probes)."""
    import httpx

    s = settings()
    port = s.observability.port_for(component)
    if url is None and port == 0:
        typer.echo(f"no observability port for {component!r}", err=True)
        raise typer.Exit(2)
    target = url or f"http://127.0.0.1:{port}/{'readyz' if ready else 'healthz'}"
    try:
        code = httpx.get(target, timeout=timeout).status_code
    except httpx.HTTPError as exc:
        typer.echo(f"{target}: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{target}: HTTP {code}")
    raise typer.Exit(0 if code == 200 else 1)


def scale(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="pipeline whose requests topic grows")],
    partitions: Annotated[int, typer.Option("--partitions", "-n", min=1, help="new partition count")],
) -> None:
    """Raise the partitions of a pipeline's requests topic (the most workers of its group that share work)."""
    from radstream.ops.scale import ScaleError, scale_pipeline

    try:
        r = scale_pipeline(settings(), pipeline, partitions)
    except ScaleError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    verb = "unchanged" if r.before == r.after else "scaled"
    typer.echo(f"{r.topic}: {verb} {r.before} -> {r.after} partitions; run up to {r.after} workers of the pipeline")


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def replay(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="pipeline whose past requests to re-run")],
    since: Annotated[str | None, typer.Option(help="ISO time: from this request time (offsets_for_times)")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time: up to this request time")] = None,
    study: Annotated[list[str] | None, typer.Option("--study", help="Study Instance UID (repeatable)")] = None,
    accession: Annotated[list[str] | None, typer.Option("--accession", help="accession number (repeatable)")] = None,
    model_version: Annotated[str | None, typer.Option("--model-version", help="run this model version")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="replay id to resume from its checkpoint")] = None,
) -> None:
    """Re-run past studies (everything retained by default) through a pipeline's replay workers."""
    import signal
    import threading

    from radstream.ops import replay as rp

    s = settings()
    if resume:
        cp = rp.Checkpoint.load(s, resume)
        if cp is None:
            typer.echo(f"no checkpoint for replay {resume}", err=True)
            raise typer.Exit(2)
    else:
        sel = rp.Selection(_parse_time(since), _parse_time(until), set(study or []), set(accession or []))
        cp = rp.start(s, pipeline, sel, model_version)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"replay {cp.replay_id}: pipeline {cp.pipeline}, model version {cp.model_version or 'as recorded'}")

    def show(c: rp.Checkpoint) -> None:
        typer.echo(f"  read {c.read}/{c.total}  emitted {c.emitted}")

    cp = rp.run(s, cp, progress=show, stop=stop)
    state = "done" if cp.done else f"stopped; resume with --resume {cp.replay_id}"
    typer.echo(f"replay {cp.replay_id}: {cp.emitted} requests emitted to {s.topic('replay.' + cp.pipeline)}, {state}")


def replay_worker(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="pipeline whose replay topic to consume")],
) -> None:
    """Run replayed requests (group radstream-replay-NAME; each request names its model version)."""
    from radstream.ops.workers import replay_worker as make

    s = settings()
    _run_worker(make(s, pipeline), s, "replay", pipeline)


def shadow(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="pipeline to shadow on the live stream")],
    model_version: Annotated[str, typer.Option("--model-version", help="the shadow model version")],
) -> None:
    """A second model version on live requests, own consumer group; results tagged shadow (hidden from readers)."""
    from radstream.ops.workers import shadow_worker

    s = settings()
    _run_worker(shadow_worker(s, pipeline, model_version), s, "shadow", pipeline, model_version)


def _run_worker(worker: Any, s: Settings, component: str, pipeline: str, model_version: str | None = None) -> None:
    """Run an off-path worker with /metrics and health: component shadow|replay (dashboard label).

    Port: ``observability.ports[component]``; a shadow worker without its own entry uses the ``infer``
    port (it runs in its own container, probed like a live worker).
    """
    import logging
    import signal

    from radstream.observability import Observability, kafka_ready, triton_ready

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    ports = s.observability.ports
    labels = {"pipeline": pipeline, **({"model_version": model_version} if model_version else {})}
    obs = Observability.for_component(s, component, labels=labels,
                                      port=ports.get(component, s.observability.port_for("infer")))
    obs.add_readiness_check("kafka", kafka_ready(s))
    obs.add_readiness_check("triton", triton_ready(s))
    worker.obs = obs
    obs.start()
    try:
        worker.run()
    finally:
        obs.stop()


def compare(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p")],
    versions: Annotated[tuple[str, str], typer.Option("--versions", help="two model versions: A B")],
) -> None:
    """Agreement of two model versions on the same studies: volume differences, detection agreement."""
    from radstream.ops.compare import compare as run

    c = run(settings(), pipeline, versions[0], versions[1])
    typer.echo(f"{pipeline}: v{c.a} {c.studies_a} studies, v{c.b} {c.studies_b} studies, {c.common} in common")
    for v in c.volumes:
        typer.echo(f"  volume {v.label:<24} n={v.pairs:<4} mean |diff|={v.mean_abs_diff:.3f} "
                   f"mean rel diff={v.mean_rel_diff_pct:.2f}%")
    for d in c.detections:
        typer.echo(f"  detection {d.label:<21} n={d.pairs:<4} same finding={d.agree}/{d.pairs}")
    if c.detection_agreement is not None:
        typer.echo(f"  label agreement: {c.detection_agreement:.1%}")


def register(app: typer.Typer, topics_app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("healthcheck")(healthcheck)
    app.command("lag-exporter")(lag_exporter)
    app.command("replay")(replay)
    app.command("replay-worker")(replay_worker)
    app.command("shadow")(shadow)
    app.command("compare")(compare)
    topics_app.command("scale")(scale)
