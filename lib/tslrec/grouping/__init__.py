"""Stage 1's data side: items pre-grouped by k-means, users described by their preference over the groups."""
