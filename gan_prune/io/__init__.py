"""Reading and writing network pickles."""
