"""What the architecture changes do (compare), and what drives latency (sweep)."""
