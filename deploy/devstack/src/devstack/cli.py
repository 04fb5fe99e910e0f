"""``clinomic``: run the whole platform locally, or benchmark it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from devstack import stack

app = typer.Typer(help="Clinomic developer commands", no_args_is_help=True)
STATE_DIR = Path(".clinomic")


@app.command()
def run(state_dir: Path = typer.Option(STATE_DIR, help="Where embedded data, secrets and logs live"),
        containers: bool = typer.Option(False, help="Use Docker containers for PostgreSQL and Kafka if an engine answers")) -> None:
    """Start PostgreSQL, the broker and all five services; stop everything on Ctrl-C."""
    typer.echo("starting Clinomic (first start takes a little longer) ...")
    with stack.platform(state_dir.resolve(), prefer_containers=containers) as platform:
        gateway = platform.gateway_url
        typer.echo(f"""
Clinomic is running ({platform.infra}).
  API:    {gateway}
  Docs:   {gateway}/docs
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
        typer.echo("stopping ...")
    typer.echo("stopped.")


@app.command()
def bench(clients: int = typer.Option(50, help="Concurrent clients"),
          seconds: float = typer.Option(20.0, help="Duration of each measured run"),
          gateway_url: str = typer.Option("", help="Benchmark a running platform instead of starting one"),
          state_dir: Path = typer.Option(Path(".clinomic-bench"), help="State of the platform started here")) -> None:
    """Classify through the gateway with N clients for T seconds; then the in-process baseline."""
    from devstack import bench as benchmark

    benchmark.main(clients=clients, seconds=seconds, gateway_url=gateway_url or None, state_dir=state_dir.resolve())
