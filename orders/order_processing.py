"""Placeholder until the order workflow lands."""
