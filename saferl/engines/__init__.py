"""Training engines: `verl` (verl's own trainer, clusters) and `local` (one machine)."""
