"""Rootless userspace network stacks (slirp4netns, passt, pasta) kept off the host's own addresses."""
