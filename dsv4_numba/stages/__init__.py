"""One module per stage: its reference kernel, production kernel(s), registration, napkin math."""
