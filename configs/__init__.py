"""gosok Hydra config tree (YAML) shipped as package data."""
