"""The cheap tier: a student distilled from SmolLM2-135M-Instruct (``python -m tools.distill``)."""
