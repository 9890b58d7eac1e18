"""The auditor's spot check of a provider's suite results (``suite=spotcheck``)."""
