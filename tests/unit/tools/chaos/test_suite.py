"""The chaos suite's plan: which stack each scenario runs on, and how long it may take."""

from tools.chaos.__main__ import stacks
from tools.chaos.scenarios import BOUND_S, BOUNDS_S, SCENARIOS, STACK_ENV


def test_scenarios_needing_other_settings_run_on_a_stack_of_their_own_after_the_others():
    groups = stacks(list(SCENARIOS))
    shared_env, shared = groups[0]
    assert shared_env == {} and "model-unload" not in shared and "long-stream" in shared
    assert groups[1:] == [(STACK_ENV["model-unload"], ["model-unload"])]
    # The open loop's requests are admitted: not the suite's limit of 2.
    assert int(STACK_ENV["model-unload"]["LLMESH_MAX_CONCURRENT_REQUESTS"]) >= 50


def test_only_one_scenario_starts_only_its_stack():
    assert stacks(["model-unload"]) == [(STACK_ENV["model-unload"], ["model-unload"])]
    assert stacks(["long-stream"]) == [({}, ["long-stream"])]


def test_the_long_scenarios_may_outlast_the_default_bound():
    # A 60 s stream after its model's first request, a model loaded again on a busy machine.
    assert BOUNDS_S["long-stream"] > BOUND_S and BOUNDS_S["model-unload"] > BOUND_S
    assert set(BOUNDS_S) <= set(SCENARIOS)
