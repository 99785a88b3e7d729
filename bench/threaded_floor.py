"""A floor worker process with the AES's threaded class: `slots` no-op jobs at once.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil
    python -m bench.threaded_floor --slots 50 QUEUE [QUEUE ...]

The same ThreadedHost as `manage.py rqworker_threads`, with slots that run any
job (the AES's own slots refuse all but theirs). bench.run starts it, from
the project's root, on the measured tier's queue.
"""

from __future__ import annotations

import argparse
import os

import django
from rq.serializers import JSONSerializer

from aes_project import processes


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.threaded_floor", description=__doc__.splitlines()[0]
    )
    parser.add_argument("queues", nargs="+")
    parser.add_argument("--slots", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
    django.setup()
    # Importable only once Django is set up.
    from workers.threaded import ThreadedHost, ThreadSlot

    class NoopSlot(ThreadSlot):
        def __init__(self, *a, **kw) -> None:
            kw["serializer"] = JSONSerializer
            super().__init__(*a, **kw)

    host = ThreadedHost(args.queues, args.slots, worker_class=NoopSlot)
    processes.on_stop_signals(host.stop)
    host.run()


if __name__ == "__main__":
    main()
