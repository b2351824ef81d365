"""The main job (``serve``) and the offline batch example."""
