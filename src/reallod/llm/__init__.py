"""The LLM plumbing: backends, response cache, retries, endpoint limits, prompt templates, reply parsing."""
