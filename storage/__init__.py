"""The versioned artifact store: a leaf package (standard library only) that every other package may import."""
