"""WSGI entry point (gunicorn aes_project.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
application = get_wsgi_application()
