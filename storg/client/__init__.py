"""The storg client library: connections kept open, many requests in flight."""
