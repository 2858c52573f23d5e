"""The Dockerfile and compose.yaml, built and run for real with podman (docs/containers.md)."""
