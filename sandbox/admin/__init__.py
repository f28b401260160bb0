"""Sandbox-only controls (a separate port the real services do not have)."""
