"""Span, metric and attribute names, in one place.

Attribute names follow OpenTelemetry's GenAI semantic conventions where one exists; llmesh's
own attributes live under ``llmesh.``.
"""

# GenAI semantic conventions.
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_SYSTEM_VALUE = "llmesh"

# llmesh attributes.
LLMESH_REQUEST_ID = "llmesh.request.id"
LLMESH_TENANT_ID = "llmesh.tenant.id"
LLMESH_ROUTE_POLICY = "llmesh.route.policy"
LLMESH_ROUTE_REASON = "llmesh.route.reason"
LLMESH_ROUTE_FALLBACKS = "llmesh.route.fallbacks"
LLMESH_ROUTE_SIGNAL_PREFIX = "llmesh.route.signal."
LLMESH_ROUTE_OUTCOME = "llmesh.route.outcome"
LLMESH_ROUTE_ESCALATE_TO = "llmesh.route.escalate_to"
LLMESH_ROUTE_ESCALATED = "llmesh.route.escalated"
LLMESH_ROUTE_WASTED_TOKENS = "llmesh.route.wasted_tokens"
LLMESH_SAFETY_BLOCKED = "llmesh.safety.blocked"
LLMESH_SAFETY_CATEGORY = "llmesh.safety.category"
LLMESH_SAFETY_RULE = "llmesh.safety.rule"
LLMESH_FAILOVER_FROM = "llmesh.inference.failover_from"
LLMESH_MODEL_VERSION = "llmesh.inference.model_version"
LLMESH_EXPERIMENT_PREFIX = "llmesh.experiment."
LLMESH_CACHE = "llmesh.cache"
LLMESH_CACHE_SIMILARITY = "llmesh.cache.similarity"
LLMESH_BATCH_ID = "llmesh.batch.id"
LLMESH_BATCH_CUSTOM_ID = "llmesh.batch.custom_id"
LLMESH_BATCH_FIRST_INDEX = "llmesh.batch.first_index"
LLMESH_BATCH_REDELIVERED = "llmesh.batch.redelivered"

# Span names of work done inside a service (RPC spans are named by the gRPC instrumentation).
SPAN_GATEWAY_CHAT = "gateway.chat"
SPAN_GATEWAY_EMBED = "gateway.embed"
SPAN_TRITON_GENERATE = "triton.generate"
SPAN_TRITON_SCORE = "triton.score"
SPAN_BATCH_CHUNK = "batch.chunk"
SPAN_BATCH_LINE = "batch.line"
SPAN_TRITON_EMBED = "triton.embed"

# Metric names (Prometheus).
METRIC_RPC_SERVER_DURATION = "llmesh_rpc_server_duration_seconds"
METRIC_RPC_SERVER_REQUESTS = "llmesh_rpc_server_requests_total"
METRIC_RPC_SERVER_IN_FLIGHT = "llmesh_rpc_server_in_flight_requests"
METRIC_GATEWAY_REQUESTS = "llmesh_gateway_requests_total"
METRIC_GATEWAY_DURATION = "llmesh_gateway_request_duration_seconds"
METRIC_GATEWAY_TTFT = "llmesh_gateway_time_to_first_token_seconds"
METRIC_GATEWAY_IN_FLIGHT = "llmesh_gateway_in_flight_requests"
METRIC_EXPERIMENT_REQUESTS = "llmesh_experiment_requests_total"
METRIC_EXPERIMENT_DURATION = "llmesh_experiment_request_duration_seconds"
METRIC_TOKENS = "llmesh_tokens_total"
METRIC_ROUTE_DECISIONS = "llmesh_route_decisions_total"
METRIC_ROUTE_ESCALATIONS = "llmesh_route_escalations_total"
METRIC_ROUTE_BUDGET_REFUSALS = "llmesh_route_budget_refusals_total"
METRIC_SAFETY_BLOCKS = "llmesh_safety_blocks_total"
METRIC_INFERENCE_FAILOVERS = "llmesh_inference_failovers_total"
METRIC_INFERENCE_BREAKER_STATE = "llmesh_inference_breaker_state"
METRIC_INFERENCE_MODEL_READY = "llmesh_inference_model_ready"
METRIC_INFERENCE_VERSION_REQUESTS = "llmesh_inference_version_requests_total"
METRIC_INFERENCE_VERSION_FAILOVERS = "llmesh_inference_version_failovers_total"

# Metrics the engine models report through Triton's /metrics (label `model`).
METRIC_ENGINE_RUNNING = "llmesh_engine_requests_running"
METRIC_ENGINE_WAITING = "llmesh_engine_requests_waiting"
METRIC_ENGINE_KV_CACHE_USAGE = "llmesh_engine_kv_cache_usage_ratio"
METRIC_ENGINE_PROMPT_TOKENS = "llmesh_engine_prompt_tokens_total"
METRIC_ENGINE_GENERATION_TOKENS = "llmesh_engine_generation_tokens_total"
METRIC_ENGINE_ABORTED = "llmesh_engine_requests_aborted_total"

# An engine model's error message for a request that is the client's fault starts with this; the
# inference service then answers INVALID_ARGUMENT and the model's circuit breaker does not count it.
ENGINE_INVALID_REQUEST_PREFIX = "invalid request: "
METRIC_BATCH_QUEUE_LENGTH = "llmesh_batch_queue_length"
METRIC_BATCH_LINES = "llmesh_batch_lines_total"
METRIC_BATCH_LINES_PER_SECOND = "llmesh_batch_lines_per_second"
METRIC_BATCH_LINE_DURATION = "llmesh_batch_line_duration_seconds"
METRIC_BATCH_TASKS = "llmesh_batch_tasks_total"
