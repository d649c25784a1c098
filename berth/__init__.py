"""Berth's command line: ``berth up`` runs everything on one machine; the rest talk to the API."""
