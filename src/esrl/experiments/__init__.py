"""Scaling experiments: sweeps over algorithms x workers x seeds, the report, the scaling model."""
