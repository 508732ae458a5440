"""The data engine: detection annotations → raw expressions (VLM/LLM) → agent re-alignment → Real-Data."""
