"""The GPU check: the engine benchmark (``engine_bench``), the service + sweep run (``check.sh``)."""
