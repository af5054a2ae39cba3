"""The quality probes: the worker that scores sampled answers and sends canaries, the probes
themselves, the scorer, regression detection and the reference audit (see ARCHITECTURE.md)."""
