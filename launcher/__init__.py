"""gosok launcher: configs, plans, the Ray layer, results and reports."""
