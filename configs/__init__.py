"""The run configs xelm ships (YAML); ``xelm demo --config NAME`` finds them by name."""
