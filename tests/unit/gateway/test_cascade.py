"""The gateway's half of the cascade: keep or escalate the small model's answer."""

from gateway import cascade
from llmesh.common.v1 import common_pb2
from llmesh.inference.v1 import inference_pb2
from llmesh.router.v1 import router_pb2

ROUTE = router_pb2.RouteResponse(
    model="llmesh-small",
    fallback_models=["smollm2-135m-instruct"],
    reason="cascade: llmesh-small first",
    cascade=router_pb2.Cascade(escalate_model="smollm2-135m-instruct", min_mean_logprob=-2.0),
)


def answer(*logprobs):
    choice = common_pb2.Completion(token_ids=range(len(logprobs)), token_logprobs=logprobs)
    return inference_pb2.GenerateResponse(model="llmesh-small", choices=[choice])


def test_a_confident_answer_is_kept():
    escalate, reason = cascade.should_escalate(ROUTE, answer(-1.0, -2.5))
    assert not escalate
    assert reason == "cascade: llmesh-small answer logprob -1.75 >= -2.00, kept"


def test_an_unsure_answer_is_escalated():
    escalate, reason = cascade.should_escalate(ROUTE, answer(-1.0, -4.0))
    assert escalate
    assert reason == "cascade: llmesh-small answer logprob -2.50 < -2.00, escalated to smollm2-135m-instruct"


def test_the_escalation_goes_to_the_large_model_without_itself_as_fallback():
    prompts = [common_pb2.ModelPrompt(model="llmesh-small", token_ids=[1, 2])]
    request = inference_pb2.GenerateRequest(
        model="llmesh-small", fallback_models=["smollm2-135m-instruct"], prompts=prompts
    )
    escalated = cascade.escalation_request(request, ROUTE)
    assert (escalated.model, list(escalated.fallback_models), list(escalated.prompts)) == (
        "smollm2-135m-instruct",
        [],
        prompts,
    )
