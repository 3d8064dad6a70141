"""contimg-grpc server: servicers -> domain -> repositories -> storage (imports only point down)."""
