"""Imported by the forkserver of duchkit's worker pools (its preload list): the server then ends
with the run that started it, and its children, whose parent it is, end with it."""
from duchkit.pipelines.worker_guard import die_with_parent

die_with_parent()
