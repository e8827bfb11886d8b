import os

from hypothesis import settings

# CI runs derandomised so a failure reproduces; locally hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=40)
settings.register_profile("dev", deadline=None, max_examples=40)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
