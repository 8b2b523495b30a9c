"""Network definitions of our own: the slim generator and its cost model."""
