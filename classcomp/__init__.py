"""classcomp's Python client: `from classcomp import Client` talks to a running service over HTTP."""

from classcomp.client import ClassCompError, Client

__all__ = ["ClassCompError", "Client"]
