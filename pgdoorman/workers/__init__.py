"""Worker processes: a supervisor and N workers that accept on one port (C{general.workers})."""
