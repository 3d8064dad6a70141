"""Domain: records, validation, query language, the job state machine and the error hierarchy.

Nothing here imports gRPC, protobuf or a database driver.
"""
