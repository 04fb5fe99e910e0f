"""``clinomic``: run the whole platform locally, or benchmark it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from shared.settings import CommonSettings, load_or_exit

from devstack import stack

app = typer.Typer(help="Clinomic developer commands", no_args_is_help=True)
STATE_DIR = Path(".clinomic")


@app.command()
def run(state_dir: Path = typer.Option(STATE_DIR, help="Where embedded data, secrets and logs live"),
        containers: bool = typer.Option(False, help="Use Docker containers for PostgreSQL and Kafka if an engine answers")) -> None:
    """Start PostgreSQL, the broker and all five services; stop everything on Ctrl-C."""
    try:
        stack.check_ports_free(stack.DEFAULT_PORTS)
    except stack.PortTaken as taken:
        typer.echo(f"error: {taken}", err=True)
        raise typer.Exit(1) from None
    typer.echo("starting Clinomic (first start takes a little longer) ...")
    started = time.monotonic()
    with stack.platform(state_dir.resolve(), prefer_containers=containers) as platform:
        gateway = platform.gateway_url
        typer.echo(f"""
Clinomic is running ({platform.infra}); ready in {time.monotonic() - started:.1f} s.
  API:    {gateway}
  Docs:   {gateway}/docs
  Kafka:  {platform.env['KAFKA_BOOTSTRAP_SERVERS']}  (event stream: docs/event-stream.md)
  Logs:   {state_dir / 'logs'}
  Demo logins (password {stack.DEMO_PASSWORD}):
    admin_demo   organisation admin       lab_demo      lab technician
    doctor_demo  doctor                   auditor_demo  auditor
    platform_demo  platform admin
Press Ctrl-C to stop.""")
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, process in platform.processes.items():
                    if process.poll() is not None:
                        typer.echo(f"{name} stopped unexpectedly (status {process.returncode}); see its log")
                        stopping = True
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        # Ctrl-C reaches this process twice (from the terminal and forwarded by `uv run`): a second interrupt
        # must not cut the shutdown short and leave services running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        typer.echo("stopping ...")
    typer.echo("stopped.")


@app.command()
def bench(clients: int = typer.Option(50, help="Concurrent clients"),
          seconds: float = typer.Option(20.0, help="Duration of each measured run"),
          rate: float = typer.Option(50.0, min=0.0, max=500.0, help="Classify/s of the open-loop run (0: skip it)"),
          gateway_url: str = typer.Option("", help="Benchmark a running platform instead of starting one"),
          idle_seconds: float = typer.Option(60.0, min=0.0, help="First measure the idle platform's CPU this long (0: skip)"),
          state_dir: Path = typer.Option(Path(".clinomic-bench"), help="State of the platform started here")) -> None:
    """The idle platform's CPU (cores per process and in total); classify latency at a fixed open-loop rate for T
    seconds; saturation throughput of N clients for T seconds; the in-process baseline; the aims with verdicts."""
    from devstack import bench as benchmark

    benchmark.main(clients=clients, seconds=seconds, rate=rate, gateway_url=gateway_url or None,
                   state_dir=state_dir.resolve(), idle_seconds=idle_seconds)


@app.command("scale-out")
def scale_out(replicas: int = typer.Option(2, help="Processes of gateway, inference and screening in phase (b)"),
              partitions: int = typer.Option(4, help="Partitions of every topic (at least --replicas)"),
              clients: int = typer.Option(50, min=1, help="Concurrent classify clients (closed loop)"),
              seconds: float = typer.Option(20.0, min=1.0, help="Duration of each measured phase"),
              state_dir: Path = typer.Option(Path(".clinomic-bench/scale-out"),
                                             help="State of the platform started here")) -> None:
    """On a platform of its own with topics of N partitions: classify with one process of each service, then with R
    replicas of gateway, inference and screening (requests spread over the gateways in turn); print throughput,
    p50/p95/p99, answers by status, accepted/recorded/duplicates/lost, CPU per process and the partitions each
    replica held. Exits 1 when a screening was lost or duplicated or a gateway never answered synchronously."""
    from devstack import scaleout

    if problem := scaleout.shape_problem(replicas, partitions):
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    if not scaleout.main(replicas=replicas, partitions=partitions, clients=clients, seconds=seconds,
                         state_dir=state_dir.resolve(), echo=typer.echo):
        raise typer.Exit(1)


@app.command()
def soak(rate: float = typer.Option(30.0, min=0.1, max=500.0, help="Classify requests per second (open loop)"),
         minutes: float = typer.Option(10.0, min=0.05, max=120.0, help="How long to keep the rate up"),
         window: float = typer.Option(30.0, min=1.0, help="Seconds per reported window"),
         gateway_url: str = typer.Option("", help="Soak a running platform instead of starting one"),
         database_url: str = typer.Option("", envvar="DATABASE_URL", help="With --gateway-url: for the backlog"),
         state_dir: Path = typer.Option(Path(".clinomic-soak"), help="State of the platform started here")) -> None:
    """Classify at a fixed rate for a bounded time; print per-window answers, latency, each service's memory and
    the intake backlog, then the drift and growth figures (aims: no errors, memory growth under 10 %)."""
    from devstack import soak as soaking

    soaking.main(rate=rate, seconds=minutes * 60, window=window, gateway_url=gateway_url or None,
                 database_url=database_url or None, state_dir=state_dir.resolve())


batch_app = typer.Typer(help="Bulk screening: make a batch file, upload one and follow it", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
URL = typer.Option("http://127.0.0.1:8000", "--url", help="The gateway")
USERNAME = typer.Option("lab_demo", help="A lab technician (or org admin) who logs in without MFA")
PASSWORD = typer.Option(stack.DEMO_PASSWORD, envvar="CLINOMIC_PASSWORD", help="Password (or CLINOMIC_PASSWORD)")


@batch_app.command("upload")
def batch_upload(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A .csv or .json batch"),
                 url: str = URL, username: str = USERNAME, password: str = PASSWORD,
                 timeout: float = typer.Option(1800.0, help="Give up following the job after this many seconds"),
                 progress: bool = typer.Option(True, help="Show a progress bar")) -> None:
    """Upload a batch, show a progress bar until every accepted row is recorded, then the summary and the
    rejected rows."""
    from devstack import batch

    try:
        batch.upload_and_follow(file, url=url.rstrip("/"), username=username, password=password, timeout=timeout,
                                progress=progress, echo=typer.echo)
    except batch.BatchFailed as failed:
        typer.echo(f"error: {failed}", err=True)
        raise typer.Exit(1) from None


@batch_app.command("generate")
def batch_generate(out: Path = typer.Argument(..., dir_okay=False, help="File to write (.csv or .json)"),
                   rows: int = typer.Option(1000, min=1, help="Rows of the batch"),
                   patients: int = typer.Option(100, min=1, help="Patients to create (with consents) and screen"),
                   url: str = URL, username: str = USERNAME, password: str = PASSWORD,
                   seed: int = typer.Option(7, help="Seed of the synthetic CBCs")) -> None:
    """Create a pool of patients with screening consents through the API, and write a batch of synthetic CBCs
    (the model's cohort generator) that screens them."""
    import asyncio
    import uuid

    import httpx

    from devstack import batch

    try:
        media = batch.media_type(out)
        pool = batch.pool_patients(patients, f"G{uuid.uuid4().hex[:6]}")
        with httpx.Client(base_url=url.rstrip("/"), timeout=60.0) as client:
            headers = batch.login(client, username, password)
        asyncio.run(batch.create_pool(url.rstrip("/"), headers, pool))
    except batch.BatchFailed as failed:
        typer.echo(f"error: {failed}", err=True)
        raise typer.Exit(1) from None
    data = batch.synthetic_rows(rows, pool, seed)
    out.write_bytes(batch.csv_bytes(data) if media == "text/csv" else batch.json_bytes(data))
    typer.echo(f"wrote {rows} rows for {patients} consented patients to {out}")


@app.command("bench-batch")
def bench_batch(rows: int = typer.Option(100_000, min=1, help="Rows of the uploaded batch"),
                patients: int = typer.Option(2_000, min=1, help="Consented patients the rows screen"),
                gateway_url: str = typer.Option("", help="Benchmark a running platform instead of starting one"),
                timeout: float = typer.Option(1800.0, help="Give up waiting for the job after this many seconds"),
                state_dir: Path = typer.Option(Path(".clinomic-bench"), help="State of the platform started here")
                ) -> None:
    """Bulk screening: rows/s from upload to recorded and to audited, the model's own limit (with explanations) on
    the same rows in the same run, their ratio, and the aims with their verdicts."""
    from devstack import batch

    batch.bench_main(rows=rows, patients=patients, gateway_url=gateway_url or None, state_dir=state_dir.resolve(),
                     timeout=timeout, echo=typer.echo)


@app.command()
def recovery(restarts: int = typer.Option(5, min=1, help="Broker restarts"),
             outage: float = typer.Option(3.0, min=0.0, help="Seconds the broker stays down each time"),
             timeout: float = typer.Option(120.0, help="Give up waiting for the groups after this many seconds"),
             state_dir: Path = typer.Option(Path(".clinomic-recovery"), help="State of the platform started here")
             ) -> None:
    """Restart the bundled broker N times; print when each consumer group is back, then min/median/max."""
    from devstack import recovery as measure

    rounds = measure.restart_rounds(state_dir.resolve(), restarts=restarts, outage=outage, timeout=timeout,
                                    echo=typer.echo)
    typer.echo("\n" + measure.summary(rounds))


@app.command()
def chaos(only: list[str] = typer.Option([], "--only", help="Run only faults whose name contains this (repeatable)"),
          state_dir: Path = typer.Option(Path(".clinomic-chaos"), help="State of the platform started here")) -> None:
    """Fault injection on a platform of its own: under classify load and a bulk batch, kill -9 each service, restart
    the broker, make PostgreSQL refuse connections, fill the intake while inference is down; print per fault:
    accepted, recorded, duplicates, lost, audited, recovery time, unexpected 5xx, latency before/after. Exits 1
    when a fault broke a promise."""
    from devstack import chaos as faults

    outcomes = faults.main(only=only, state_dir=state_dir.resolve(), echo=typer.echo)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


dead_app = typer.Typer(help="Dead letters: messages a consumer group gave up on (docs/reliability.md)",
                       no_args_is_help=True)
app.add_typer(dead_app, name="deadletters")
BOOTSTRAP = typer.Option("127.0.0.1:9092", "--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS", help="The broker")


def kafka_settings() -> CommonSettings:
    """The services' Kafka settings from the environment (TLS/SASL: ``KAFKA_SECURITY_PROTOCOL`` and its
    companions, docs/deployment.md), so that an operator's command connects as they do; one line and exit 2 when
    unusable."""
    return load_or_exit(CommonSettings, "clinomic deadletters")


@dead_app.command("list")
def deadletters_list(bootstrap: str = BOOTSTRAP,
                     group: str = typer.Option("", help="Only the dead letters of this consumer group")) -> None:
    """List the dead letters, oldest first: reference (partition:offset), when, group, origin, reason."""
    import asyncio

    from shared.deadletter import read_dead_letters

    letters = [d for d in asyncio.run(read_dead_letters(bootstrap, settings=kafka_settings()))
               if not group or d.group == group]
    for d in letters:
        typer.echo(f"{d.ref:<8} {d.at[:19]:<19} {d.group:<28} {d.topic}[{d.source_partition}]@{d.source_offset} "
                   f"after {d.attempts} attempts: {d.reason}")
    typer.echo(f"{len(letters)} dead letter(s)")


@dead_app.command("replay")
def deadletters_replay(refs: list[str] = typer.Argument(None, help="References (partition:offset) to replay"),
                       every: bool = typer.Option(False, "--all", help="Replay every dead letter (of --group)"),
                       group: str = typer.Option("", help="Only the dead letters of this consumer group"),
                       bootstrap: str = BOOTSTRAP) -> None:
    """Publish dead letters to their original topics again, byte for byte (consumers ignore duplicates)."""
    import asyncio

    from shared.deadletter import read_dead_letters, replay

    if not refs and not every:
        raise typer.BadParameter("name dead letters (partition:offset) or pass --all")
    settings = kafka_settings()
    letters = [d for d in asyncio.run(read_dead_letters(bootstrap, settings=settings))
               if (every or d.ref in set(refs or ())) and (not group or d.group == group)]
    missing = set(refs or ()) - {d.ref for d in letters}
    if missing:
        typer.echo(f"error: no such dead letter: {', '.join(sorted(missing))}", err=True)
        raise typer.Exit(1)
    typer.echo(f"replayed {asyncio.run(replay(bootstrap, letters, settings=settings))} dead letter(s)")
