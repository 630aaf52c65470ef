"""The studio: the Gradio app, the CLI and the job runner. Owns the workspace's store."""
