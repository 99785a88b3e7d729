"""A fair-floor worker process with the AES's threaded class: `--slots` floor jobs at once.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil
    python -m bench.floor_worker --slots 500 QUEUE [QUEUE ...]

The same ThreadedHost as `manage.py rqworker_threads`, with slots that take
the floor's job (bench/floor_work.py; the AES's own slots refuse all but
theirs). bench.run starts it, from the project's root, on the measured
tier's queue, with the environment run_execution_worker gives its threaded
workers (DB_POOL_SIZE). The forking shape needs no entry point of its own:
`manage.py rqworker --worker-class bench.floor_work.ForkingFloorWorker`.
"""

from __future__ import annotations

import argparse
import os

import django

from aes_project import processes


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor_worker", description=__doc__.splitlines()[0]
    )
    parser.add_argument("queues", nargs="+")
    parser.add_argument("--slots", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
    django.setup()
    # Importable only once Django is set up.
    from bench.floor_work import FloorSlot
    from workers.threaded import ThreadedHost

    host = ThreadedHost(args.queues, args.slots, worker_class=FloorSlot)
    processes.on_stop_signals(host.stop)
    host.run()


if __name__ == "__main__":
    main()
