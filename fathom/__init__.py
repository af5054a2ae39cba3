"""Fathom's commands, its report and its upstream simulator: the top layer (see ARCHITECTURE.md)."""
