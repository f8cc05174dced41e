"""Issue 17's speed targets: the one place they are declared (benchmarks.speed judges runs
against them, benchmarks.update_readme lists them; no torch import here)."""

# Accuracy: the worst of the seeds ("anchor": the anchor's own accuracy in the same
# invocation); time: the median of the seeds as a multiple of the anchor's seconds.
TARGETS = {
    "fast-top": {"acc": "anchor", "required_ratio": 0.75, "goal_ratio": 0.5},
    "fast-50k": {"acc": 0.80, "required_ratio": 0.16, "goal_ratio": 0.12},
    "fast-seed001": {"acc": 0.85, "required_ratio": 0.25, "goal_ratio": 0.16},
    "best-seed001": {"acc": 0.89, "goal_acc": 0.90, "required_ratio": 2.4, "goal_ratio": 2.4},
}
MIN_SEEDS = 3  # a verdict needs this many runs
# images/s of the engine over the conventional Dataset + DataLoader pipeline, same network
# (benchmarks.throughput)
THROUGHPUT_REQUIRED_RATIO = 2.5
