"""earful's stream processing: the Faust app, its agents, the tagger, the detector, the sinks."""
