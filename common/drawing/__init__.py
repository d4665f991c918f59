"""Drawing for P5: the scores of completed digits and their references, and the figures."""
