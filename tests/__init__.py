"""slimserve tests; they mirror the packages."""
