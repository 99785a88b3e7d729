"""A floor worker process with the AES's threaded class: `slots` no-op jobs at once.

    python -m bench.threaded_floor --slots 50 enterprise

The same ThreadedHost as `manage.py rqworker_threads`, with slots that run any
job (the AES's own slots refuse all but theirs).
"""

from __future__ import annotations

import argparse
import os
import signal

import django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("queues", nargs="+")
    parser.add_argument("--slots", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
    django.setup()
    from rq.serializers import JSONSerializer

    from workers.threaded import ThreadedHost, ThreadSlot

    class NoopSlot(ThreadSlot):
        def __init__(self, *a, **kw) -> None:
            kw["serializer"] = JSONSerializer
            super().__init__(*a, **kw)

    host = ThreadedHost(args.queues, args.slots, worker_class=NoopSlot)
    signal.signal(signal.SIGTERM, lambda *_: host.stop())
    host.run()


if __name__ == "__main__":
    main()
