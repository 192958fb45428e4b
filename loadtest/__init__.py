"""Locust users and benchmark drivers (land with the load-test issue)."""
