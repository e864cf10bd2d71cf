"""cvtasks models: PyTorch only (never imports grpc or generated stubs)."""
