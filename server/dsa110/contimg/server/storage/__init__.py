"""Storage engines behind the repository Protocols. Dialect-specific SQL lives only here."""
