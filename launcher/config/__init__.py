"""Configuration: typed schemas (one dataclass per config group), the GPU catalogue, allocation
rules and the validation pass that runs before anything starts.
"""
