"""Shared fixtures: tiny real models and real data, never mocks of them."""
