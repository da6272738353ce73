"""Files the app needs at run time (data files; see README.md in this folder)."""
