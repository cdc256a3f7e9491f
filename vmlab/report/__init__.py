"""Statistics, comparisons and the report renderers."""

FORMATS = ("md", "csv", "json", "junit", "html")
"""What :func:`vmlab.report.render.write_report` writes (here, so that the CLI names them
without loading the renderers)."""
