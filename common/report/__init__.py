"""The hand-in report that make_report.py builds: its blocks, the result files it reads, the code it shows, its
summary and closing part, and the three writers (markdown, notebook, one HTML page)."""
