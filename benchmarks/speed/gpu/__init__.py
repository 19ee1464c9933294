"""The GPU suite's sections, one module each, and its report (``benchmarks.speed.gpu_suite``)."""
