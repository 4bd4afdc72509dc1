"""Benchmarks of the syncd hub against a floor (a minimal relay) and a peer (python-socketio), in one run.

``python -m benchmarks <sync|write|fanout|conns|all> [--json] [--quick|--smoke]``; see benchmarks/README.md.
Nothing here is imported by the hub or the tests: it is a tool, run by hand or by ``make bench``.
"""
