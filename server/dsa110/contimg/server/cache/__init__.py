"""Query-result caching for the expensive reads, kept exact across replicas through Redis."""
