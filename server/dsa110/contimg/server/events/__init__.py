"""Job event delivery: committed events fan out to WatchJob/WatchJobs streams."""
