"""What a user sets, read and checked without torch: the dial (`dial.py`), the sampling numbers
(`numbers.py`), the settings of a generation (`generation.py`) and typed configuration files
(`typed_config.py`). The command line checks a whole command with these before it imports torch."""
