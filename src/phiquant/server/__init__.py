"""phiquant's OpenAI-compatible server (Starlette on uvicorn; `pip install phiquant[serve]`)."""
