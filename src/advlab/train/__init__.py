"""advlab.train."""
