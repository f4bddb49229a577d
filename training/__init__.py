"""Training, calibration and the offline cost/accuracy harness of the difficulty router."""
