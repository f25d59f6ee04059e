"""Safety-aware rollout: the reflect-and-correct agent loop and the Ray-hosted rollout servers."""
