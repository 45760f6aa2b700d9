"""A/B tests of any service deployment, model or setting: definitions, sticky assignment,
per-variant figures in Redis, shadow traffic and reports (see docs/EXPERIMENTS.md)."""
