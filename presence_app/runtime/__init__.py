"""Process plumbing shared by every layer: versions, logs, in-flight requests, GC."""
