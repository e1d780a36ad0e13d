"""The worker process: django-q2's cluster as `manage.py qcluster` runs it, and the
runtime that holds many segments in flight on one event loop. Imports the engine; the
engine does not import it (`workflows/tasks.py`, the task functions django-q2 calls by
dotted path, belongs to this layer but stays where queued tasks name it)."""
