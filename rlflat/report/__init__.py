"""Statistics, figures and the report that answer the question across runs."""
