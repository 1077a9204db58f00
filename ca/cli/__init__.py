"""The `meshca` command line: the one layer that imports every package."""
