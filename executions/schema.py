"""OpenAPI generation: every operation documents the API's error responses."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable UPPER_SNAKE code, e.g. NOT_FOUND.")
    message = serializers.CharField()
    # Any JSON value, null included: field errors for INVALID, else null.
    details = serializers.JSONField(help_text="Field errors, for INVALID; else null.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# Every route may answer these; POST routes and filtered lists also 400.
ERRORS = {
    "401": "No or bad credentials.",
    "403": "The credentials may not do this.",
    "404": "No such execution for this caller.",
    "429": "Too many requests for this token.",
}


class ApiSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        codes = dict(ERRORS)
        if self.method == "POST" or self._is_list_view():
            codes["400"] = "The request is invalid."
        if self.method == "POST" and "cancel" in self.path:
            codes["409"] = "The run has already ended."
        elif self.method == "POST":
            codes["413"] = "The run's message would exceed AES_MAX_MESSAGE_BYTES."
        for code, description in codes.items():
            if code not in responses:
                response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                response["description"] = description
                responses[code] = response
        return responses
