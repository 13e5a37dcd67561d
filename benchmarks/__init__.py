"""Speed benchmarks against the peer (the authors' ``xenoverse`` generator); see ``benchmarks/README.md``.

Run one with ``python -m benchmarks.<name>`` from the repository root. Nothing here is imported by
the package or the tests.
"""
