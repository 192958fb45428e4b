"""Developer tools run from a checkout (`python tools/NAME.py`); a package so that tests can import them."""
