"""Web demos (Gradio): the Real-Model page (``model_app``) and the agent page (``agent_app``).

Submodules import gradio (the ``demo`` extra); ``limits``, ``forms`` and ``examples`` do not.
"""
