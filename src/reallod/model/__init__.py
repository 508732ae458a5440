"""Real-Model: the MM-Grounding-DINO detector, language-based inference, drawing and checkpoint conversion.

Submodules import torch and transformers; import them directly (``reallod.model.inference``...).
"""
