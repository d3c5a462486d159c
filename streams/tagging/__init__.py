"""Topic tagging: taxonomy, compiled matcher, learned tier."""
