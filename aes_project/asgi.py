"""ASGI entry point: uvicorn (scripts/serve) or gunicorn's uvicorn workers (the image).

The web app is served under ASGI so that a client following a run's events
(executions/events_views.py) waits in the event loop, not in a thread. The
other views stay sync; Django runs each request's sync code in a thread of
its own, so a connection kept past its request would never be reused:
Django asks for persistent connections to be off under ASGI, and a pool
(DB_POOL_SIZE, PostgreSQL) to reuse them instead.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
if not os.environ.get("DB_CONN_MAX_AGE"):  # unset or empty: the default, under ASGI
    os.environ["DB_CONN_MAX_AGE"] = "0"
application = get_asgi_application()
