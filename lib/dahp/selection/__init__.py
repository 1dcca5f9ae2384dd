"""Choosing λ: the surrogate indicator ξ and Algorithm 1, the rule registry (every way of choosing λ
as one named object), and the public selector for a user's own ``dattri`` task."""
