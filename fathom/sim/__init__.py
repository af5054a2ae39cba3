"""The upstream simulator behind `fathom simulate` (command: `fathom.commands.simulate`).

models: the knobs of a simulated model and the YAML that lists them · answers: what it says ·
plan: per-request timing, faults and wire variants (pure) · wire: OpenAI JSON shapes and SSE
bytes (pure) · server: the aiohttp application · lateness: how late sends are vs the schedule.
"""
