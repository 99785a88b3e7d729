"""Settings of the Agent Execution Service, read from the environment.

Every variable is documented in `.env.example`. Defaults let a fresh checkout
run and test: SQLite in the project folder, a private Redis-compatible server
when REDIS_URL is unset, DEBUG on unless AES_ENV=production.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from aes_project import embedded_redis, logs, outbound
from aes_project.env import env_bool, env_float, env_floats, env_list, env_str
from protocol.keys import DJANGO_CACHE_PREFIX

BASE_DIR = Path(__file__).resolve().parent.parent

PRODUCTION = env_str("AES_ENV", "development") == "production"
DEBUG = env_bool("DEBUG", not PRODUCTION)

# Development settings say so at every start (aes_project/checks.py, aes.W001).
DEVELOPMENT_SECRET_KEY = "insecure-development-key-never-use-in-production"
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = DEVELOPMENT_SECRET_KEY

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
if PRODUCTION:
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Production answers plain HTTP with a redirect to HTTPS, except the probes,
# which speak plain HTTP from inside the cluster (paths without their "/").
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^(health|ready|metrics)$"]
# Seconds browsers keep to HTTPS once they saw the header (sent over HTTPS
# only). A year, as the preload list asks; 0 sends no header.
SECURE_HSTS_SECONDS = int(env_float("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if PRODUCTION else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
# Django's defaults, stated: no framing, no MIME sniffing, no cross-origin referrer.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_rq",
    "axes",
    "aes_project",  # the project's system checks (aes_project/checks.py)
    "tiers",
    "llm_models",
    "executions",
    "tokens",
    "webhooks",
    "workers",
    "standins",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything reads the session, a filter or a lookup from the request.
    "aes_project.middleware.RefuseUnstorableCharacters",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: turns a locked-out admin login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# The web server serves the admin's and API docs' static files itself
# (uvicorn has no static files of its own): collected into STATIC_ROOT in
# production, found in the apps in development.
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# The admin login resists password guessing (django-axes): the axes backend
# refuses a locked-out login before the ModelBackend checks its password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed admin logins of one username from one address before that pair is
# locked out, and the minutes the lockout lasts after its last failure.
AXES_FAILURE_LIMIT = int(env_float("AES_ADMIN_LOGIN_FAILURES", 10, minimum=1))
AXES_COOLOFF_TIME = timedelta(minutes=env_float("AES_ADMIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Lockouts apply under /admin/ only: the API's Basic authentication answers
# its own 429s (tokens/guard.py), never axes' 403s. Its failures are still
# recorded, so they count towards the admin lockout of that username and address.
AXES_ONLY_ADMIN_SITE = True
# The client address as the API sees it (AES_NUM_PROXIES, below).
AXES_CLIENT_IP_CALLABLE = "tokens.guard.client_ident"

ROOT_URLCONF = "aes_project.urls"
WSGI_APPLICATION = "aes_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_float("DB_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (consumer, workers, web) share the file: wait for the
    # write lock instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    # A file, not memory, so the processes a test starts share its database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / "test.sqlite3")}

# Connections a process keeps in a pool (PostgreSQL only; 0: none, each
# thread keeps its own for DB_CONN_MAX_AGE seconds). run_execution_worker
# sets it for its threaded workers, whose runs share a few connections and
# hold one only while they write (executions/turns.py).
DB_POOL_SIZE = int(env_float("DB_POOL_SIZE", 0))
if DB_POOL_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them instead
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_SIZE,
        # Seconds a thread waits for a free connection before its query
        # fails. Under overload waiting is queueing: long, so an overloaded
        # worker makes runs slower rather than failing them.
        "timeout": env_float("DB_POOL_TIMEOUT", 120.0, minimum=1.0),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Redis and RQ -----------------------------------------------------------

if PRODUCTION and not env_str("REDIS_URL"):
    # A private server would lose every queued run on restart.
    raise ImproperlyConfigured("REDIS_URL must be set in production.")
REDIS_URL = embedded_redis.ensure_redis_url()

# One RQ queue per tier, named after the tier. Tier limits live in the Tier
# table; only the queue names are listed here, because django-rq needs them at
# start-up (for `manage.py rqworker` and its admin views).
AES_QUEUE_TIERS = env_list("AES_QUEUE_TIERS", ["enterprise", "professional", "advance", "free"])
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "SERIALIZER": "rq.serializers.JSONSerializer"}
    for name in AES_QUEUE_TIERS
}
# Enqueue at once: the consumer enqueues only after the Execution row is
# committed and acknowledges the message only after the enqueue returned, an
# order it must see happen (a deferred enqueue would let it acknowledge first).
RQ = {"WORKER_CLASS": "workers.rq_worker.ExecutionWorker", "COMMIT_MODE": "auto"}

# --- The service ------------------------------------------------------------

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
# The model an agent gets when it names none, or one the model table does
# not know (docs/agents.md, "Models").
AES_DEFAULT_MODEL = env_str("AES_DEFAULT_MODEL", "gpt-4o-mini")
# Seconds the model table is served from the in-process cache before re-reading.
AES_MODEL_CACHE_SECONDS = env_float("AES_MODEL_CACHE_SECONDS", 5.0)

# Seconds a pseudo-synchronous request to AMS or CS waits for its reply.
AES_PEER_TIMEOUT_SECONDS = env_float("AES_PEER_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# Seconds one try of an LLM call may take (never past the run's deadline): a
# hung model server costs a run this, not its whole deadline.
AES_LLM_CALL_TIMEOUT_SECONDS = env_float("AES_LLM_CALL_TIMEOUT_SECONDS", 60.0, minimum=0.1)
# Seconds a tool waits for its ES/QS callback (never past the run's deadline).
AES_TOOL_TIMEOUT_SECONDS = env_float("AES_TOOL_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# Seconds a streamed LLM answer may stay silent between two chunks before the
# call is an LLM error (data.stream runs only).
AES_LLM_STREAM_IDLE_SECONDS = env_float("AES_LLM_STREAM_IDLE_SECONDS", 30.0, minimum=0.1)
# Seconds between the comment lines that keep an idle event stream's
# connection open (GET /api/executions/{id}/events/); proxies drop silent ones.
AES_EVENTS_KEEPALIVE_SECONDS = env_float("AES_EVENTS_KEEPALIVE_SECONDS", 15.0, minimum=0.1)
# Hosts that tools and webhooks may call (aes_project/outbound.py): `*` is any
# host with only public addresses; a named host may be private.
AES_TOOL_ALLOWED_HOSTS = env_str("AES_TOOL_ALLOWED_HOSTS", "*")
AES_WEBHOOK_ALLOWED_HOSTS = env_str("AES_WEBHOOK_ALLOWED_HOSTS", "*")
for _name in ("AES_TOOL_ALLOWED_HOSTS", "AES_WEBHOOK_ALLOWED_HOSTS"):
    try:
        outbound.HostPolicy.from_setting(globals()[_name])
    except ValueError as exc:
        raise ImproperlyConfigured(f"{_name}: {exc}") from None
# Bytes of a tool's result the model sees; the rest is cut and marked as cut.
AES_TOOL_RESULT_MAX_BYTES = int(env_float("AES_TOOL_RESULT_MAX_BYTES", 16384, minimum=256))
# Seconds an MCP server's tool list is cached (per tenant and server) before it is listed again.
AES_MCP_TOOLS_CACHE_SECONDS = env_float("AES_MCP_TOOLS_CACHE_SECONDS", 300.0, minimum=1.0)
# Tokens one model request may hold when the agent declares no `context_window`.
AES_DEFAULT_CONTEXT_WINDOW = int(env_float("AES_DEFAULT_CONTEXT_WINDOW", 128000, minimum=1024))
# Seconds a tier row is served from the in-process cache before re-reading.
AES_TIER_CACHE_SECONDS = env_float("AES_TIER_CACHE_SECONDS", 5.0)
# Seconds a consumer's heartbeat stays valid; a consumer silent for longer
# is presumed dead and the messages it held are put back on their lists.
AES_CONSUMER_HEARTBEAT_TTL = env_float("AES_CONSUMER_HEARTBEAT_TTL", 30.0, minimum=1.0)
# Seconds past its deadline after which a running run whose worker is gone
# is closed by the reaper (RQ itself kills a live job 30 s past it).
AES_REAPER_GRACE_SECONDS = env_float("AES_REAPER_GRACE_SECONDS", 60.0)
# Seconds between two reaper passes.
AES_REAPER_INTERVAL_SECONDS = env_float("AES_REAPER_INTERVAL_SECONDS", 15.0, minimum=0.5)
# Seconds a running run's lease lives without its process's heartbeat: a
# worker that stops is noticed this long after, and its runs resumed (§9).
AES_RUN_HEARTBEAT_TTL = env_float("AES_RUN_HEARTBEAT_TTL", 15.0, minimum=1.0)
# Times a run is resumed after losing its worker before it fails WORKER_LOST.
AES_MAX_RESUMES = int(env_float("AES_MAX_RESUMES", 2, minimum=0))
# Runs each RQ worker process executes at once, in threads: a run waits on
# its model nearly all the time, and an idle slot costs ~20 KiB (500 slots:
# 115 MiB of RSS in all). 1 forks a work-horse per run instead, for
# isolation. Sizing: docs/operations.md.
AES_RUNS_PER_WORKER = int(env_float("AES_RUNS_PER_WORKER", 500, minimum=1))
# Of those, how many work at once (the rest wait for the model, a peer or
# tools, or for a turn): more threads asking for the interpreter at once
# only spread each run's work over longer (executions/turns.py).
AES_ACTIVE_RUNS_PER_WORKER = int(env_float("AES_ACTIVE_RUNS_PER_WORKER", 8, minimum=1))
# Bytes above which a queued message is refused without parsing.
AES_MAX_MESSAGE_BYTES = int(env_float("AES_MAX_MESSAGE_BYTES", 1024 * 1024, minimum=1024))

# --- Webhooks ----------------------------------------------------------------

# Seconds one webhook request may wait to connect, to send, or for its answer.
AES_WEBHOOK_TIMEOUT_SECONDS = env_float("AES_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Seconds from a failed webhook attempt to the next, one per retry: Standard
# Webhooks' schedule, 8 attempts over 27.5 hours, then the delivery is given up.
AES_WEBHOOK_RETRY_SECONDS = env_floats(
    "AES_WEBHOOK_RETRY_SECONDS", [5, 300, 1800, 7200, 18000, 36000, 36000]
)
# Webhooks each run_execution_worker sends at once.
AES_WEBHOOK_CONCURRENCY = int(env_float("AES_WEBHOOK_CONCURRENCY", 8, minimum=1))

# --- API ---------------------------------------------------------------------

# Proxies in front of the web processes, each appending the address it saw to
# X-Forwarded-For (1 behind one TLS proxy). The API's throttles, its failed
# authentication budget and the admin's lockouts count that client address.
AES_NUM_PROXIES = int(env_float("AES_NUM_PROXIES", 0))

REST_FRAMEWORK = {
    # Tenant tokens first; Basic before Session so a request without
    # credentials gets 401 and a WWW-Authenticate header rather than 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tokens.authentication.BearerTokenAuthentication",
        "tokens.authentication.GuardedBasicAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    # DRF's defaults with a bounded JSON parser; the browsable API's HTML
    # forms post form and multipart bodies.
    "DEFAULT_PARSER_CLASSES": [
        "executions.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "executions.schema.ApiSchema",
    "EXCEPTION_HANDLER": "aes_project.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["executions.throttles.PerCallerThrottle"],
    "DEFAULT_THROTTLE_RATES": {"caller": env_str("AES_API_RATE", "600/min")},
    # Never None, DRF's default, which trusts a client's own X-Forwarded-For.
    "NUM_PROXIES": AES_NUM_PROXIES,
}

# Failed Bearer or Basic authentications an address may make per window
# ("N/s|min|hour|day", the window opening at its first failure); past them its
# API credentials answer 429, unchecked, until the window ends (tokens/guard.py).
# Checked here rather than by tokens.guard.parse_rate: importing DRF from the
# settings would freeze its settings before REST_FRAMEWORK exists.
AES_AUTH_FAILURE_RATE = env_str("AES_AUTH_FAILURE_RATE", "30/min")
if not re.fullmatch(r"[1-9][0-9]*/(s|sec|m|min|h|hour|d|day)", AES_AUTH_FAILURE_RATE):
    raise ImproperlyConfigured(
        "AES_AUTH_FAILURE_RATE must read N/s, N/min, N/hour or N/day,"
        f" got {AES_AUTH_FAILURE_RATE!r}"
    )

SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Execution Service API",
    "DESCRIPTION": "Start, follow and cancel agent runs. See docs/api.md.",
    "VERSION": "1.0.0",
    # 3.1: JSON Schema proper, so the pydantic-described RunRequest (null for
    # "not given") is valid as it is.
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Runs and webhooks both have a `status`, of different choices.
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "executions.models.Status",
        "WebhookStatusEnum": "webhooks.models.Webhook.Status",
    },
}

# DRF throttle counts, shared by every web process.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Under the AES's reserved namespace (PROTOCOL.md §3), like every key it owns.
        "KEY_PREFIX": DJANGO_CACHE_PREFIX,
    }
}

# Prompts and answers are customer data: they stay out of logs unless this is on.
AES_LOG_CONTENT = env_bool("AES_LOG_CONTENT", False)

logs.install()  # records made during a run carry its ids
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s%(run_context)s",
        },
        "json": {"()": "aes_project.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if env_str("LOG_FORMAT", "plain") == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "rq.worker": {"level": env_str("RQ_LOG_LEVEL", "WARNING")},
        # A line per LLM request says nothing the run's steps do not.
        "httpx2": {"level": "WARNING"},
    },
}
