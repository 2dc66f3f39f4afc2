"""convert.glm."""
