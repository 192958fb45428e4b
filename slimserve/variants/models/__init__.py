"""Built-in model definitions: the digits CNN and the MiniLM sentence encoder."""
