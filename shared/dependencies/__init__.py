"""Job dependencies: the edges between jobs and the gating of runs on them."""
