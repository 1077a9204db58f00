"""In-process Kubernetes API server stand-in for tests."""

from .fake_apiserver import FakeKubeApiServer

__all__ = ["FakeKubeApiServer"]
