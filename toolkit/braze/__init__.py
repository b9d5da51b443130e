"""Braze side: REST client over a transport seam (retries, rate limits), Braze limits, payload
rules, segment-filter model and evaluator."""
