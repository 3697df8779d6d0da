"""Load generation against the HTTP service. ``http_load``: a managed ``bentoml serve`` subprocess and
closed-loop HTTP clients, used by ``python -m bench.service_overhead.measure``. (The Locust latency-by-depth runs are
not written yet.)"""
