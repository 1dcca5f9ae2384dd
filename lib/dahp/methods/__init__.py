"""Methods beyond the paper's own: learned parameter-group weights (seed 002)."""
