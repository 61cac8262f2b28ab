"""The Ray Serve application and the Ray-free serving logic it wraps."""
