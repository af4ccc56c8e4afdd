"""RobustLens core: models, data, attacks and the analyses, without any UI."""
