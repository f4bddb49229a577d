"""Routing: the policy, escalation and the answer checks."""
