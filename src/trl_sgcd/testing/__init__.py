"""Test and demo helpers that ship with the package: a local OpenAI-compatible server and sample sibling groups."""
