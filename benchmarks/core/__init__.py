"""What every benchmark shares: the typed benchmark record and its registry, the one timing
module, the Ray session and results writing.
"""
