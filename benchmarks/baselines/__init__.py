"""What the benchmarks measure the service against, each in the same run on the same machine."""
