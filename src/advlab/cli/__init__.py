"""The ``advlab`` command-line interface (imports everything; nothing imports it)."""
