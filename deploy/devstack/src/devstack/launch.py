"""One service process of the local platform: import the application first, serve once given its environment.

Importing a service (FastAPI, SQLAlchemy, FastStream, its own modules) costs each process about 3 s of CPU, and
its environment (the database's and the broker's addresses) exists only once the infrastructure has started.
``devstack.stack`` therefore starts every service process through this module before the infrastructure: the
imports run beside PostgreSQL's and the broker's start, and each process then waits on its standard input for
one JSON object, its environment, and runs uvicorn with the given arguments. An empty input (the platform gave
up before starting it) ends the process quietly.

    python -m devstack.launch auth.app:create_app --host 127.0.0.1 --port 8001 ...
"""

from __future__ import annotations

import importlib
import json
import os
import sys


def main(argv: list[str]) -> None:
    target, *uvicorn_args = argv
    importlib.import_module(target.split(":", 1)[0])
    line = sys.stdin.readline()
    if not line:
        return
    os.environ.clear()
    os.environ.update(json.loads(line))
    from uvicorn.main import main as uvicorn

    uvicorn.main(["--factory", target, *uvicorn_args], prog_name="uvicorn")


if __name__ == "__main__":
    main(sys.argv[1:])
