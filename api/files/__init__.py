"""/v1/files: streamed multipart uploads with size limits and SHA-256, listing, content, deletion."""
