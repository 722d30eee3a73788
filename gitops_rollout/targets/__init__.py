"""Serving platforms: per target, the routing objects and native traffic fields we render."""
