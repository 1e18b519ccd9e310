"""Development tools, not shipped in the worker image: the local dev stack (broker + Redis),
the benchmarks and the demo. Their commands plug into ``stream-ae`` through entry points."""
