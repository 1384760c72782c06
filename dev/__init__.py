"""Development tooling: running the real processes locally (tests, benchmarks, the demo)."""
