"""Tests of the server side (CLI for now)."""
