"""Source connectors: each fetches a page of mentions since a cursor; the runner produces them to Kafka."""
