"""Real-Agent fine-tuning: the agent's own traces become chat datasets (``sft_data``), a small student is
LoRA-tuned on them (``trainer``), and the student answers in the agent through an ``adapter:`` role
(``agent_config``, the transformers backend) or a LoRA served by vLLM. ``agreement`` measures how often
a model's constrained decisions equal the teacher's on held-out images.

Imports ``agent``, ``runs``, ``llm``, ``data`` and ``errors``; heavy libraries (torch, transformers,
peft, TRL, datasets) only inside the functions that train or measure.
"""
