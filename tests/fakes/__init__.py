"""Local fakes of remote services (HTTP servers speaking their real protocols) for tests and benchmarks."""
