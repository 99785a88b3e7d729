from rest_framework import serializers

from executions.models import STEP_FIELDS, Execution, ExecutionStep


class ExecutionStepSerializer(serializers.ModelSerializer):
    cost_usd = serializers.FloatField(read_only=True, allow_null=True)

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
            "model",
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

    def get_usage(self, execution: Execution) -> dict[str, int | float | None]:
        # As the callback has it (§4): cost_usd a number, null while running or when unknown.
        return {
            "prompt_tokens": execution.prompt_tokens,
            "completion_tokens": execution.completion_tokens,
            "total_tokens": execution.total_tokens,
            "cost_usd": None if execution.cost_usd is None else float(execution.cost_usd),
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
