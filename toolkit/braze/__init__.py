"""Braze side: REST client, instances, payload rules, segment-filter model and evaluator."""
