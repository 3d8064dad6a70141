"""Repositories: async Protocols per resource. Storage engines implement them; servicers use them."""
