"""The tweet service example: a repository, an HTTP app, a load generator and the demo."""
