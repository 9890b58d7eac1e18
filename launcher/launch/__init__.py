"""Starting ranks from the driver (placement, the node agents, a launch's rank groups, a
benchmark's worker group) and ``gosok launch``: the command, the restart supervisor,
checkpoints and W&B logging."""
