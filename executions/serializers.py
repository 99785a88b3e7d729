from rest_framework import serializers

from executions.models import STEP_FIELDS, Execution, ExecutionStep


class ExecutionStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = ExecutionStep
        fields = ["id", *STEP_FIELDS]


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
            "stop_reason",
            "error",
            "iterations",
            "resumes",
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


class RunAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    action_id = serializers.CharField()
    status = serializers.CharField()
    url = serializers.CharField()


class CancelSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
