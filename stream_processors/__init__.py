"""Faust stream processors: classify and route, one provider agent per model, and the Postgres sink."""
