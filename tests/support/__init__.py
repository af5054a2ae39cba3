"""Support code shared by the tests and the benches: one copy of each helper (STYLE 15).

Nothing here is a test; pytest collects none of it. Fixtures stay in tests/conftest.py as thin
wrappers over these functions. The benches import from here too (they run from a checkout,
never from the wheel), so a helper the soak and a test both need is written once.
"""
