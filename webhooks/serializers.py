from rest_framework import serializers

from webhooks.models import Webhook, WebhookAttempt


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["started_at", "outcome", "status_code", "error", "duration_ms"]


class WebhookSerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(source="event_id", help_text="Sent as webhook-id.")
    attempts = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta:
        model = Webhook
        fields = [
            "id",
            "url",
            "webhook_id",
            "status",
            "created_at",
            "next_attempt_at",
            "delivered_at",
            "attempts",
        ]
