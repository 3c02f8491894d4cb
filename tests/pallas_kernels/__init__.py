"""Tests of the Pallas kernel packages (reference implementations and dispatch)."""
