"""What phiquant's files plug into: Ollama Modelfiles and Hugging Face model cards."""
