"""What a run tells people: progress as it trains, report.json and report.html at the end."""
