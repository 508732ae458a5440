"""Run machinery that knows no agent: concurrency, journal, run session, shards, progress, images, Ray."""
