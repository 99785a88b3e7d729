"""Refuse requests carrying characters the database cannot store, before any view runs."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, JsonResponse

from aes_project.errors import error_body
from protocol.storable import UNSTORABLE

# A NUL reaching a filter, a lookup or a session key is a 500 from
# PostgreSQL. Django's decoding never yields lone surrogates (it
# re-percent-encodes or replaces what is not UTF-8), but they would fail the
# same way, so they are refused with NUL (protocol/storable.py).


class RefuseUnstorableCharacters:
    """Answer 400 INVALID_REQUEST when the path, the query or a header holds a NUL.

    One place for the whole site: the API's filters and lookups, the session
    cookie, a token's prefix and the Idempotency-Key all reach the database
    (or a run's record) with these values. So does the user name of HTTP
    Basic credentials, checked once base64-decoded.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            where = unstorable_part(request)
        except TooManyFieldsSent:  # over DATA_UPLOAD_MAX_NUMBER_FIELDS: Django's HTML 400
            return invalid_request("The query has too many fields.")
        if where is not None:
            return invalid_request(
                f"A NUL (or another character that cannot be stored) in the request's {where}."
            )
        return self.get_response(request)


def invalid_request(message: str) -> JsonResponse:
    """Return a 400 with the API's error body (aes_project/errors.py)."""
    return JsonResponse(error_body("INVALID_REQUEST", message), status=400)


def unstorable_part(request: HttpRequest) -> str | None:
    """Return the part of `request` carrying an unstorable character, or None.

    "path", "query", "headers", or "credentials" (HTTP Basic, decoded).
    """
    if UNSTORABLE.search(request.path):
        return "path"
    # Decoded as the views will see it (%00 becomes NUL), keys and values alike.
    for key, values in request.GET.lists():
        if UNSTORABLE.search(key) or any(UNSTORABLE.search(value) for value in values):
            return "query"
    for key, value in request.META.items():
        if (key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) and (
            isinstance(value, str) and UNSTORABLE.search(value)
        ):
            return "headers"
    if b"\x00" in basic_credentials(request):
        return "credentials"
    return None


def basic_credentials(request: HttpRequest) -> bytes:
    """Return the decoded "user:password" of an HTTP Basic Authorization header, or b""."""
    scheme, _, encoded = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return b""
    try:
        return base64.b64decode(encoded.strip())  # as leniently as DRF decodes it
    except (binascii.Error, ValueError):
        return b""
