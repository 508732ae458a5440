import pytest

from reallod.eval import jobs


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a model is loaded: the checks of inputs and outputs must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs and outputs were checked")

    monkeypatch.setattr(jobs, "load_model", refuse)
