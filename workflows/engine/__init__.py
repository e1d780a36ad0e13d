"""The engine: a run's lifecycle and its steps, wherever they execute.

Everything a segment needs to run (context, history, executor, transitions, leases,
the segment runtime protocol, retry and circuits, the queue it enqueues on) and the
services and selectors the other layers call. It imports none of `worker`, `console`
or `agents` (tests/workflows/test_layers.py checks it). Leases are here, not in
`worker`: a segment holds one however it runs, inline too.
"""
