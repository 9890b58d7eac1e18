"""``gosok report``: render, verify and compare results files; everything derived from the file."""
