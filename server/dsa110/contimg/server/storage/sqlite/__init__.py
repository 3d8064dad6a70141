"""Embedded SQLite storage on aiosqlite: one serialized writer, a small pool of readers."""
