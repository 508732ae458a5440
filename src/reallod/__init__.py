"""Real-LOD: re-align language to visual objects with an agentic workflow."""

__version__ = "0.1.0"
