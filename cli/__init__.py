"""The ``tokenrelay`` command line."""
