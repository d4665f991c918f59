"""Drawing for P5: the scores of completed digits and their references, the figures, and trainings side by side."""
