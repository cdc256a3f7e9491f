"""fio: job rendering and parsing of its JSON output, every 2.x and 3.x layout.

jobs (job files from the spec), model (the typed results), parse (fio's output into them),
combine (jobs merged as group_reporting would) and summary (flat metrics of one job).
"""
