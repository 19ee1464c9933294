"""Reference implementations in the original papers' formulations, for the speed benchmarks."""
