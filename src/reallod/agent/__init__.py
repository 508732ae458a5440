"""Real-Agent, the paper's workflow: the state machine (``state``, ``workflow``), its roles and the
decisions they return, the image views, tasks; and its inputs and outputs: task lists (``inputs``),
assembly into Real-Data, the trace, reports, ``realign`` itself, shard merge and ``agent_eval``.

The LLM plumbing it calls lives in :mod:`reallod.llm`, the run machinery in :mod:`reallod.runs`.
"""
