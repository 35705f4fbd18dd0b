"""A hospital's HTTP server (issue 13): FastAPI over one hospital's records service."""
