"""Benchmarks: each module is a command (``python -m bench.<name>``) that starts what it needs."""

# Quick timings for the stacks the benchmarks start (production defaults: shared/settings.py).
FAST = {
    "BERTH_HEARTBEAT_INTERVAL": "0.5",
    "BERTH_TICK_INTERVAL": "0.2",
    "BERTH_PULL_EXPIRES": "0.5",
    "BERTH_HEALTH_INTERVAL": "0.5",
    "BERTH_STOP_GRACE": "3",
}
