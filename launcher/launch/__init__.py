"""``gosok launch``: the command, the restart supervisor, checkpoints and W&B logging."""
