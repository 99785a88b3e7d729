from rest_framework import serializers

from executions.models import Execution, ExecutionStep


class ExecutionStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = ExecutionStep
        fields = [
            "id",
            "kind",
            "name",
            "input",
            "output",
            "error",
            "prompt_tokens",
            "completion_tokens",
            "duration_ms",
            "created_at",
        ]


class ExecutionSerializer(serializers.ModelSerializer):
    usage = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = [
            "id",
            "action_id",
            "task_id",
            "tenant_id",
            "tier",
            "session_id",
            "agent_id",
            "conversation_id",
            "status",
            "message",
            "response",
            "error",
            "iterations",
            "usage",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "callback_sent_at",
        ]

    def get_usage(self, execution: Execution) -> dict[str, int]:
        return {
            "prompt_tokens": execution.prompt_tokens,
            "completion_tokens": execution.completion_tokens,
            "total_tokens": execution.total_tokens,
        }

    def get_error(self, execution: Execution) -> dict[str, str] | None:
        if not execution.error_code:
            return None
        return {"code": execution.error_code, "message": execution.error_message or ""}


class ExecutionDetailSerializer(ExecutionSerializer):
    steps = ExecutionStepSerializer(many=True, read_only=True)

    class Meta(ExecutionSerializer.Meta):
        fields = [*ExecutionSerializer.Meta.fields, "limits", "steps"]


class RunRequestSerializer(serializers.Serializer):
    """A run to start: the `data` of execution.agent_run plus envelope fields.

    A tenant token fixes tenant_id and tier; staff name them.
    """

    agent_id = serializers.CharField(max_length=255)
    message = serializers.CharField()
    message_type = serializers.CharField(required=False, default="text")
    user_info = serializers.DictField(required=False)
    conversation_id = serializers.CharField(max_length=255, required=False)
    max_iterations = serializers.IntegerField(min_value=1, required=False)
    timeout = serializers.IntegerField(min_value=1, required=False)
    session_id = serializers.CharField(max_length=255, required=False, allow_null=True)
    task_id = serializers.CharField(max_length=255, required=False)
    callback_queue = serializers.CharField(max_length=512, required=False, allow_null=True)
    metadata = serializers.DictField(required=False)
    tenant_id = serializers.CharField(max_length=255, required=False, help_text="Staff only.")
    tier = serializers.CharField(max_length=32, required=False, help_text="Staff only.")


class RunAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    action_id = serializers.CharField()
    status = serializers.CharField()
    url = serializers.CharField()


class CancelSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
