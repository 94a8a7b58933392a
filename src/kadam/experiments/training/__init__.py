"""One training run of a task with a named optimizer (the stability margin runs and ``kadam demo`` use it)."""
