"""One error shape for the whole API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.views import exception_handler


def error_body(code: str, message: str, details: object = None) -> dict:
    """Return the API's error body; `code` is a stable UPPER_SNAKE string."""
    return {"error": {"code": code, "message": message, "details": details}}


def api_exception_handler(exc, context):
    """Return DRF's error response, reshaped; codes are stable UPPER_SNAKE strings."""
    # Django's own exceptions, as DRF's handler would turn them.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = getattr(exc, "detail", None)
    code = getattr(exc, "default_code", "error")
    if isinstance(detail, dict | list):
        message, details = "The request is invalid.", response.data
        code = "invalid"
    else:
        message, details = str(detail or response.data), None
        code = getattr(detail, "code", code) or code
    response.data = error_body(str(code).upper(), message, details)
    return response
