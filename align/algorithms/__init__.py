"""What a step does, per algorithm: advantage estimators and sample filters."""
