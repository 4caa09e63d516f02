"""A user's project whose hand-written rules exist only once its functions run (tests/test_record.py)."""
