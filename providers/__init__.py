"""Model clients, token counting and prices."""
