"""fio: job rendering and parsing of its JSON output, every 2.x and 3.x layout."""
