"""Commands of the pipeline; filled in as it is built."""

commands: list = []
