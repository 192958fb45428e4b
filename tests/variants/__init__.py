"""Tests of the compression pipeline."""
