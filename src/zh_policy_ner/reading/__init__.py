"""Text and reading: decoding and normalising scraped reports (text), finding and reading them in
files, folders and JSONL (corpus)."""
