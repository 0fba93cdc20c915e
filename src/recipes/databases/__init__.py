"""One module per database engine: its dump, its restore and a check that it answers."""
