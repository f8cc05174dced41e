"""The benchmarks: each module runs as `python -m benchmarks.NAME` from the repository root and
writes benchmarks/results/*.json (`python -m benchmarks.update_readme` turns those into the
README's summary and docs/results.md). Importing the package imports nothing else."""
