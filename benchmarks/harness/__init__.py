"""The benchmark harness: suites of checkpoints x benchmarks, the results store, reports."""
