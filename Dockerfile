# The Agent Execution Service: one image for every process (docs/deployment.md).
#   web:       the default command, gunicorn on 0.0.0.0:8000
#   consumer:  python manage.py run_execution_worker --rq-workers 0
#   worker:    python manage.py rqworker enterprise professional advance free
#   migrate:   python manage.py migrate --no-input
# At run time the image needs SECRET_KEY, DATABASE_URL and REDIS_URL. Without
# REDIS_URL the settings would start a private, non-persistent Redis inside
# the container, which no other container shares.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=aes_project.settings \
    AES_ENV=production

# An unprivileged user with a home (gunicorn keeps its control socket in
# ~/.gunicorn). The code stays owned by root, read-only for this user.
RUN groupadd --system --gid 10001 aes \
    && useradd --system --uid 10001 --gid aes --create-home --home-dir /home/aes \
       --shell /usr/sbin/nologin aes

WORKDIR /app

# Dependencies in their own layer: rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Static files (admin, REST framework, Swagger UI) into STATIC_ROOT, served by
# WhiteNoise. The settings need a SECRET_KEY when DEBUG is off, and would start
# an embedded Redis without REDIS_URL; collectstatic connects to neither, so
# both are throwaway values that exist only during this RUN.
RUN SECRET_KEY=collectstatic-only-not-a-secret \
    REDIS_URL=redis://unused:6379/0 \
    python manage.py collectstatic --no-input \
    && python -m compileall -q /app

USER aes

EXPOSE 8000

# Exec form: gunicorn is PID 1 (or the child of the compose init) and gets
# SIGTERM directly; it stops gracefully within its 30 s graceful timeout.
# Each worker is a uvicorn worker serving the ASGI app: a client following a
# run's events (SSE) waits in its event loop, not in a thread of its own.
# Workers: WEB_CONCURRENCY (gunicorn's default reads it), 1 when unset.
CMD ["gunicorn", "aes_project.asgi:application", \
     "--worker-class", "uvicorn_worker.UvicornWorker", \
     "--bind", "0.0.0.0:8000", \
     "--worker-tmp-dir", "/dev/shm", \
     "--access-logfile", "-"]
