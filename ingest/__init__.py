"""The ingest API: accepts prompts over HTTP, publishes them to Kafka, and bridges /generate to the answer."""
