"""Offline compression pipeline: recipes → fp32 / int8 / pruned / distilled variants → model repository."""
