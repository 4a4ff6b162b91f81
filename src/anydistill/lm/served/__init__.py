"""A teacher in another process: the subset of vLLM's OpenAI-compatible API that serves a teacher's
top-k log-probabilities (``/v1/completions`` with ``prompt_logprobs``), plus a binary extension
for what vLLM does not serve (top-k, adaptive-k and hidden-state rows as safetensors bytes).

- :mod:`.protocol`: the wire formats, parsed and validated in one place (both ends use it).
- :mod:`.server`: ``anydistill serve-teacher``, an ASGI app around a local checkpoint.
- :mod:`.client`: `ServedTeacher`, what the methods talk to (vLLM or our server).
"""
