"""The API's JSON parser: DRF's, with bounds on nesting and on size."""

from __future__ import annotations

from django.conf import settings
from rest_framework import exceptions, parsers
from rest_framework.utils import json  # DRF's, with its strict_constant

from protocol.storable import depth_exceeds

# Levels of arrays and objects a request body may nest before it is refused
# as unparsable. Far deeper, Python's JSON parser (and json.dumps, which
# pushes the run) raise RecursionError. What a run's message may nest (32
# levels) is checked after parsing, with an error naming the field.
MAX_BODY_DEPTH = 100


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "message_too_large"  # as a run's message over AES_MAX_MESSAGE_BYTES


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, bounded: in bytes read, and in levels of nesting.

    DRF streams the body past DATA_UPLOAD_MAX_MEMORY_SIZE, the bound Django
    puts on every other body it reads into memory; here it holds for JSON
    too (or AES_MAX_MESSAGE_BYTES if larger, so that any message fits).
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        raw = read_bounded(stream)
        try:
            # A charset naming no text encoding ("zlib", "rot13") is a LookupError.
            text = raw.decode(encoding)
            parse_constant = json.strict_constant if self.strict else None
            data = json.loads(text, parse_constant=parse_constant)
        except RecursionError:
            raise exceptions.ParseError(too_deep()) from None
        except (LookupError, ValueError) as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        if depth_exceeds(data, MAX_BODY_DEPTH):
            raise exceptions.ParseError(too_deep())
        return data


def read_bounded(stream) -> bytes:
    """Return the body, or raise RequestTooLarge once it passes the bound."""
    if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is None:  # Django's "no limit"
        return stream.read()
    limit = max(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, settings.AES_MAX_MESSAGE_BYTES)
    raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    return raw


def too_deep() -> str:
    return f"JSON parse error - arrays and objects nested deeper than {MAX_BODY_DEPTH} levels."
