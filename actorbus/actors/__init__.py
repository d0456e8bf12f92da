"""Built-in actors (policy, gateway, jobs, node control): actors like any other, served
by the same pipeline with no back door into it."""
