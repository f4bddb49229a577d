"""Prechecks on what comes in, before routing: size and shape limits shared by the API and the classify stage,
and PII detection and redaction."""
