"""Small apps that CLI tests load with ``--app tests.apps.<module>:app``."""
