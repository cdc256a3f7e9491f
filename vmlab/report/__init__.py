"""Statistics, comparisons and the report renderers."""
