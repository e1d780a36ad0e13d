"""The intake API: submit orders, read them and their runs, decide fraud reviews."""
