"""What an experiment is: the typed definition stored in Redis and written in YAML files.

Weights are basis points of the assignment units (10,000 = everyone), so a 0.01% variant is
``weight: 1``. Variants own contiguous bucket ranges in the order they are declared; keep that
order when changing weights and only the share that moved changes variant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

BUCKETS = 10_000

# Names end up in Redis keys and HTTP header names, so they stay in a safe alphabet.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SERVICES = ("preprocess", "router", "inference", "postprocess")
UNITS = ("tenant", "user", "session", "request")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} must be lower-case letters, digits, '-' or '_' (at most 63)")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    """What the variants change.

    - ``service``: each variant is served by a deployment of ``service`` (resolved by
      mesh.discovery; in Kubernetes the same assignment header selects an Istio subset);
    - ``model``: each variant's ``model`` answers requests that ask for ``auto``;
    - ``setting``: the variant travels in RequestContext.experiments and the service named by
      ``service`` reads it (a policy, a prompt template); the gateway changes nothing itself.
    """

    kind: Literal["service", "model", "setting"]
    service: str | None = None

    @model_validator(mode="after")
    def _service_named(self) -> Target:
        if self.kind in ("service", "setting") and self.service not in SERVICES:
            raise ValueError(f"target.service must be one of {', '.join(SERVICES)} for kind {self.kind!r}")
        if self.kind == "model" and self.service is not None:
            raise ValueError("a model target names no service")
        return self

    @property
    def named_service(self) -> str:
        """The service of a service or setting target (the validator makes sure it names one)."""
        if self.service is None:
            raise ValueError(f"a {self.kind} target names no service")
        return self.service


class Variant(_Strict):
    name: Name
    weight: int = Field(ge=0, le=BUCKETS)
    # service target: the deployment that serves this variant; "primary" (the default) is the
    # service's normal address.
    deployment: str = "primary"
    # model target: the model that answers.
    model: str | None = None


class Shadow(_Strict):
    """A share of the experiment's requests is replayed on ``deployment``/``model`` after the
    primary answer has left; the shadow's answer is compared and recorded, never returned."""

    name: Name = "shadow"
    deployment: str = "primary"
    model: str | None = None
    share: int = Field(ge=0, le=BUCKETS, description="basis points of the experiment's requests")


class Experiment(_Strict):
    name: Name
    description: str = ""
    target: Target
    variants: list[Variant] = Field(min_length=2)
    unit: Literal["tenant", "user", "session", "request"] = "user"
    # Empty: the name. A new salt reshuffles every unit (a fresh experiment on the same name).
    salt: str = ""
    state: Literal["running", "stopped"] = "running"
    # The variant others are compared with; empty: the first.
    control: str = ""
    # Below this many requests in a variant the report warns that its figures are not a verdict.
    min_samples: int = Field(default=100, ge=1)
    shadow: Shadow | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        total = sum(variant.weight for variant in self.variants)
        if total != BUCKETS:
            raise ValueError(f"variant weights must sum to {BUCKETS} basis points, not {total}")
        if self.control and self.control not in names:
            raise ValueError(f"control {self.control!r} is not a variant")
        if self.target.kind == "model" and any(variant.model is None for variant in self.variants):
            raise ValueError("every variant of a model experiment names its model")
        if self.shadow is not None and self.shadow.name in names:
            raise ValueError(f"the shadow's name {self.shadow.name!r} is already a variant's")
        return self

    @property
    def control_variant(self) -> str:
        return self.control or self.variants[0].name

    @property
    def hash_salt(self) -> str:
        return self.salt or self.name

    def variant(self, name: str) -> Variant | None:
        return next((variant for variant in self.variants if variant.name == name), None)


_EXPERIMENTS = TypeAdapter(list[Experiment])


def parse_yaml(text: str) -> list[Experiment]:
    """A YAML document holding ``experiments: [...]``, a list, or one experiment."""
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "experiments" in data:
        data = data["experiments"]
    if isinstance(data, dict):
        data = [data]
    experiments = _EXPERIMENTS.validate_python(data or [])
    names = [experiment.name for experiment in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names must be unique in a file: {names}")
    return experiments


def load_file(path: Path) -> list[Experiment]:
    return parse_yaml(path.read_text())


def conflicts(experiments: list[Experiment]) -> list[str]:
    """Running experiments that would steer the same thing at once (their effects would mix)."""
    seen: dict[tuple[str, str | None], str] = {}
    problems = []
    for experiment in experiments:
        if experiment.state != "running" or experiment.target.kind == "setting":
            continue
        key = (experiment.target.kind, experiment.target.service)
        if key in seen:
            problems.append(f"{experiment.name!r} and {seen[key]!r} both steer {key[1] or 'the model'}")
        else:
            seen[key] = experiment.name
    return problems
