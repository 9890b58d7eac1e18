"""The acceptance suite: phases as typed records, verdicts against catalogue and contract, bad-
node isolation, reports and comparisons.
"""
