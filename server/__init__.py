"""The SM1 FastAPI server."""
