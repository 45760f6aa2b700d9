"""llmesh's text library: what more than one process needs to read and write model text."""
