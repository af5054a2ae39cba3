"""The proxy side (proxy, SSE timing, records, sampler, metrics, routing, drain), the wire
contract both sides share (wire.py) and the store (store/): see ARCHITECTURE.md."""
